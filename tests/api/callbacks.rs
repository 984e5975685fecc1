//! Durable, signed callbacks (SPEC §9) against a real local HTTP receiver: exactly one signed
//! delivery per event, retries under one `webhook-id`, no head-of-line blocking, private
//! targets refused, delivery after a SIGKILL, and no double sends across replicas.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes, extract::State, http::HeaderMap, http::StatusCode as AxumStatus, routing::post,
    Router,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use futures::future::join_all;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp},
    process::ServerProcess,
};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("callback body is JSON")
    }
}

/// How the receiver answers the n-th request (0-based) to a path.
type Behaviour = Arc<dyn Fn(&str, usize) -> Answer + Send + Sync>;

#[derive(Clone, Copy)]
pub enum Answer {
    Status(u16),
    Hang,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(
        behaviour: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = (received.clone(), Arc::new(behaviour) as Behaviour);
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, received }
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got `count` requests (or fails after `within`).
    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let requests = self.requests(path);
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {count} callbacks arrived",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State((received, behaviour)): State<(Arc<Mutex<Vec<Received>>>, Behaviour)>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    let nth = {
        let mut received = received.lock().expect("lock");
        let nth = received.iter().filter(|r| r.path == path).count();
        received.push(Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: body.to_vec(),
            at: Instant::now(),
        });
        nth
    };
    match behaviour(&path, nth) {
        Answer::Status(code) => AxumStatus::from_u16(code).unwrap_or(AxumStatus::OK),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            AxumStatus::OK
        }
    }
}

fn always_ok(_: &str, _: usize) -> Answer {
    Answer::Status(200)
}

/// A server whose callbacks may reach this machine, retried quickly.
async fn spawn(backend: Backend, schedule: &[u64]) -> Option<TestApp> {
    let schedule: Vec<Duration> = schedule
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    TestApp::spawn_with(backend, move |config| {
        config.callbacks.allow_private = true;
        config.callbacks.schedule = schedule;
        config.callbacks.attempt_timeout = Duration::from_secs(2);
        config.callbacks.poll_interval = Duration::from_millis(50);
    })
    .await
}

/// Creates a task with `callback_url`, claims it and completes it; returns the completed task.
async fn complete_with_callback(app: &TestApp, callback_url: &str) -> Value {
    let (status, task) = app
        .create_image_task(json!({"callback_url": callback_url}))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().expect("id").to_owned();
    let (status, claimed) = app.post("/v1/work/claim", &json!({"limit": 100})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let lease = claimed["leases"]
        .as_array()
        .and_then(|leases| {
            leases
                .iter()
                .find(|lease| lease["task"]["task_id"] == id.as_str())
        })
        .expect("the task was claimed")
        .clone();
    let (status, done) = app
        .post(
            &format!("/v1/task/{id}/complete"),
            &json!({"lease_token": lease["lease_token"], "response": {"annotations": [{"label": "car"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    done
}

async fn callback_succeeded(app: &TestApp, task_id: &str, within: Duration) -> Option<bool> {
    let deadline = Instant::now() + within;
    loop {
        let (_, task) = app.get(&format!("/v1/task/{task_id}")).await;
        if let Some(flag) = task["callback_succeeded"].as_bool() {
            return Some(flag);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Standard Webhooks verification, written here from the specification rather than taken
/// from the server: HMAC-SHA256 keyed with the bytes behind `whsec_`, over `id.ts.body`.
pub fn verify_signature(signing_secret: &str, request: &Received) -> bool {
    let key = STANDARD
        .decode(signing_secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let signed = format!(
        "{}.{}.{}",
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        String::from_utf8_lossy(&request.body)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(signed.as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    request
        .header("webhook-signature")
        .split(' ')
        .any(|signature| signature.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn a_completion_fires_exactly_one_signed_callback(backend: Backend) {
    let Some(app) = spawn(backend, &[0, 200]).await else {
        return;
    };
    let receiver = Receiver::start(always_ok).await;
    let done = complete_with_callback(&app, &format!("{}/hooks/done", receiver.url)).await;
    let task_id = done["task_id"].as_str().unwrap();
    assert_eq!(
        callback_succeeded(&app, task_id, Duration::from_secs(10)).await,
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = receiver.requests("hooks/done");
    assert_eq!(requests.len(), 1, "exactly one callback");
    let request = &requests[0];

    let secrets = app
        .service
        .show_callback_secrets(&app.account, false)
        .await
        .expect("secrets");
    assert_eq!(request.header("scale-callback-auth"), secrets.auth_key);
    assert!(secrets.signing_secret.starts_with("whsec_"));
    assert!(
        verify_signature(&secrets.signing_secret, request),
        "signature verifies: {request:?}"
    );
    assert!(
        !verify_signature("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", request),
        "and only with the account's secret"
    );
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(request.header("webhook-id").starts_with("msg_"));
    assert!(request
        .header("content-type")
        .starts_with("application/json"));

    let body = request.json();
    assert_eq!(body["task_id"], task_id);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["response"], json!({"annotations": [{"label": "car"}]}));
    assert_eq!(body["task"]["task_id"], task_id);
    assert_eq!(body["task"]["status"], "completed");
    assert_eq!(
        body["task"]["callback_url"],
        format!("{}/hooks/done", receiver.url)
    );
}

async fn a_receiver_that_fails_twice_gets_the_third_attempt_under_the_same_webhook_id(
    backend: Backend,
) {
    let Some(app) = spawn(backend, &[0, 100, 100, 100]).await else {
        return;
    };
    let receiver = Receiver::start(|_, nth| {
        if nth < 2 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let done = complete_with_callback(&app, &format!("{}/flaky", receiver.url)).await;
    let requests = receiver.wait_for("flaky", 3, Duration::from_secs(10)).await;
    let ids: Vec<&str> = requests.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0] && !id.is_empty()),
        "one webhook-id: {ids:?}"
    );
    assert_eq!(
        callback_succeeded(
            &app,
            done["task_id"].as_str().unwrap(),
            Duration::from_secs(5)
        )
        .await,
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.requests("flaky").len(),
        3,
        "no attempt after the success"
    );
}

async fn when_attempts_run_out_callback_succeeded_is_false(backend: Backend) {
    let Some(app) = spawn(backend, &[0, 100]).await else {
        return;
    };
    let receiver = Receiver::start(|_, _| Answer::Status(503)).await;
    let done = complete_with_callback(&app, &format!("{}/down", receiver.url)).await;
    assert_eq!(
        callback_succeeded(
            &app,
            done["task_id"].as_str().unwrap(),
            Duration::from_secs(10)
        )
        .await,
        Some(false)
    );
    assert_eq!(
        receiver.requests("down").len(),
        2,
        "one attempt per schedule entry"
    );
}

async fn a_receiver_that_never_answers_does_not_delay_another(backend: Backend) {
    let Some(app) = spawn(backend, &[0, 60_000]).await else {
        return;
    };
    let receiver = Receiver::start(|path, _| {
        if path == "slow" {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    })
    .await;
    complete_with_callback(&app, &format!("{}/slow", receiver.url)).await;
    receiver.wait_for("slow", 1, Duration::from_secs(5)).await;
    // The slow receiver now holds an attempt open for the whole 2 s timeout.
    let started = Instant::now();
    complete_with_callback(&app, &format!("{}/fast", receiver.url)).await;
    let fast = receiver.wait_for("fast", 1, Duration::from_secs(5)).await;
    let waited = fast[0].at.duration_since(started);
    assert!(
        waited < Duration::from_millis(1500),
        "the fast receiver waited {waited:?} behind the slow one"
    );
}

async fn failure_audit_and_test_world_creation_fire_callbacks(backend: Backend) {
    let Some(app) = spawn(backend, &[0]).await else {
        return;
    };
    let receiver = Receiver::start(always_ok).await;

    // fail → status error
    let (_, task) = app
        .create_image_task(json!({"callback_url": format!("{}/failed", receiver.url)}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let (_, claimed) = app.post("/v1/work/claim", &json!({})).await;
    let token = claimed["leases"][0]["lease_token"].clone();
    let (status, _) = app
        .post(
            &format!("/v1/task/{id}/fail"),
            &json!({"lease_token": token, "error": "blurry"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let failed = receiver
        .wait_for("failed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(failed[0].json()["status"], "error");
    assert_eq!(failed[0].json()["response"], json!({"error": "blurry"}));

    // A test-world task completes at creation, and its callback fires too.
    let test_key = app.key_for_same_account(&app.account, true).await;
    let (status, created) = app
        .send(
            app.request_as(&test_key, reqwest::Method::POST, "/v1/task/imageannotation")
                .json(&json!({
                    "attachment": "https://e.com/x.png",
                    "geometries": {"box": {"objects_to_annotate": ["car"]}},
                    "callback_url": format!("{}/test-world", receiver.url),
                })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let test_world = receiver
        .wait_for("test-world", 1, Duration::from_secs(10))
        .await;
    assert_eq!(test_world[0].json()["status"], "completed");
    assert_eq!(test_world[0].json()["task_id"], created["task_id"]);

    // An audit of a completed task fires one more.
    let (status, _) = app
        .send(
            app.request_as(
                &test_key,
                reqwest::Method::POST,
                &format!("/v1/task/{}/audit", created["task_id"].as_str().unwrap()),
            )
            .json(&json!({"accepted": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let audited = receiver
        .wait_for("test-world", 2, Duration::from_secs(10))
        .await;
    assert_eq!(
        audited[1].json()["task"]["audits"].as_array().map(Vec::len),
        Some(1)
    );
    assert_ne!(
        audited[0].header("webhook-id"),
        audited[1].header("webhook-id"),
        "a new event, a new id"
    );
}

async fn private_targets_are_refused_unless_allowed(app: TestApp) {
    // `app` runs with the defaults: private callbacks are not allowed.
    let receiver = Receiver::start(always_ok).await;
    let done = complete_with_callback(&app, &format!("{}/private", receiver.url)).await;
    assert_eq!(
        callback_succeeded(
            &app,
            done["task_id"].as_str().unwrap(),
            Duration::from_secs(10)
        )
        .await,
        Some(false)
    );
    let by_name = complete_with_callback(
        &app,
        &format!(
            "{}/private-name",
            receiver.url.replace("127.0.0.1", "localhost")
        ),
    )
    .await;
    assert_eq!(
        callback_succeeded(
            &app,
            by_name["task_id"].as_str().unwrap(),
            Duration::from_secs(10)
        )
        .await,
        Some(false)
    );
    assert!(
        receiver.requests("private").is_empty() && receiver.requests("private-name").is_empty()
    );
}

backend_tests!(private_targets_are_refused_unless_allowed);

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod each_backend {
            $(
                mod $name {
                    use crate::helpers::Backend;
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() { super::super::$name(Backend::Sqlite).await }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() { super::super::$name(Backend::Postgres).await }
                }
            )*
        }
    };
}

on_both_backends!(
    a_completion_fires_exactly_one_signed_callback,
    a_receiver_that_fails_twice_gets_the_third_attempt_under_the_same_webhook_id,
    when_attempts_run_out_callback_succeeded_is_false,
    a_receiver_that_never_answers_does_not_delay_another,
    failure_audit_and_test_world_creation_fire_callbacks,
    a_callback_committed_before_a_crash_is_delivered_after_restart,
);

const REPLICA_ENV: [(&str, &str); 2] = [
    ("ANNOTASK_ALLOW_PRIVATE_CALLBACKS", "true"),
    ("ANNOTASK_CALLBACK_SCHEDULE", "3s,200ms"),
];

/// The completion commits, then the process is SIGKILLed before the first attempt is due;
/// a new process over the same database delivers it.
async fn a_callback_committed_before_a_crash_is_delivered_after_restart(backend: Backend) {
    // The in-process server shares the database but must not deliver anything itself.
    let Some(app) = TestApp::spawn_with(backend, |config| config.callbacks.deliver = false).await
    else {
        return;
    };
    let receiver = Receiver::start(always_ok).await;
    let doomed = ServerProcess::start_with_env(&app.database_url, &REPLICA_ENV).await;
    let call = |path: String, body: Value| {
        app.http
            .post(format!("{}{path}", doomed.base_url))
            .basic_auth(&app.api_key, Some(""))
            .json(&body)
            .send()
    };
    let task: Value = call(
        "/v1/task/imageannotation".into(),
        json!({
            "attachment": "https://e.com/x.png", "geometries": {"box": {}},
            "callback_url": format!("{}/after-crash", receiver.url),
        }),
    )
    .await
    .expect("create")
    .json()
    .await
    .expect("json");
    let claimed: Value = call("/v1/work/claim".into(), json!({}))
        .await
        .expect("claim")
        .json()
        .await
        .expect("json");
    let completed = call(
        format!("/v1/task/{}/complete", task["task_id"].as_str().unwrap()),
        json!({"lease_token": claimed["leases"][0]["lease_token"], "response": {"ok": true}}),
    )
    .await
    .expect("complete");
    assert_eq!(completed.status(), StatusCode::OK);
    doomed.crash();
    assert!(
        receiver.requests("after-crash").is_empty(),
        "nothing was sent before the crash"
    );

    let _survivor = ServerProcess::start_with_env(&app.database_url, &REPLICA_ENV).await;
    let delivered = receiver
        .wait_for("after-crash", 1, Duration::from_secs(15))
        .await;
    assert_eq!(delivered[0].json()["task_id"], task["task_id"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests("after-crash").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_postgres_never_send_the_same_attempt_twice() {
    const TASKS: usize = 30;
    let Some(app) =
        TestApp::spawn_with(Backend::Postgres, |config| config.callbacks.deliver = false).await
    else {
        return;
    };
    let receiver = Receiver::start(always_ok).await;
    let env = [
        ("ANNOTASK_ALLOW_PRIVATE_CALLBACKS", "true"),
        ("ANNOTASK_CALLBACK_SCHEDULE", "1s,1s"),
    ];
    let replicas = [
        ServerProcess::start_with_env(&app.database_url, &env).await,
        ServerProcess::start_with_env(&app.database_url, &env).await,
        ServerProcess::start_with_env(&app.database_url, &env).await,
    ];
    join_all((0..TASKS).map(|i| {
        app.create_image_task(json!({"callback_url": format!("{}/shared/{i}", receiver.url)}))
    }))
    .await;
    let (_, claimed) = app.post("/v1/work/claim", &json!({"limit": 100})).await;
    let leases = claimed["leases"].as_array().cloned().unwrap_or_default();
    assert_eq!(leases.len(), TASKS);
    let app = &app;
    join_all(leases.iter().map(|lease| async move {
        let path = format!(
            "/v1/task/{}/complete",
            lease["task"]["task_id"].as_str().unwrap()
        );
        let body = json!({"lease_token": lease["lease_token"], "response": {"ok": true}});
        app.post(&path, &body).await
    }))
    .await;
    // All three replicas poll the same outbox once the first attempts fall due.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.received.lock().expect("lock").len() < TASKS {
        assert!(Instant::now() < deadline, "not every callback arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = receiver.received.lock().expect("lock").clone();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for request in &received {
        *per_id
            .entry(request.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), TASKS);
    assert!(
        per_id.values().all(|count| *count == 1),
        "an attempt was sent twice: {per_id:?}"
    );
    drop(replicas);
}
