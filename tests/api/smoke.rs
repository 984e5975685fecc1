use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    backend_tests,
    helpers::{Backend, TestApp},
    process::free_port,
};

async fn a_created_task_can_be_fetched_over_rest(app: TestApp) {
    let (status, created) = app.create_image_task(json!({"unique_id": "smoke-1"})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let task_id = created["task_id"].as_str().expect("task_id");
    let (status, fetched) = app.get(&format!("/v1/task/{task_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);
}

backend_tests!(
    a_created_task_can_be_fetched_over_rest,
    database_pool_use_is_exported,
    idempotency_replays_and_conflicts_are_counted,
);

/// The value of the sample `name{labels}` on a `/metrics` page (0 if absent: counters start
/// when first incremented). The labels given must all be there, in any order.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, "}"));
            let label_text = label_text.strip_suffix('}')?;
            let pairs: Vec<&str> = label_text.split(',').collect();
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(key, wanted)| pairs.contains(&format!("{key}=\"{wanted}\"").as_str()));
            matches.then(|| value.parse::<f64>().expect("a sample value"))
        })
        .next()
        .unwrap_or(0.0)
}

pub async fn scrape(app: &TestApp) -> String {
    let response = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("text")
}

const REQUESTS: &str = "annotask_http_requests_total";
const DURATION: &str = "annotask_http_request_duration_seconds";

/// Counts and latency buckets are exact: each test runs in its own process under nextest, and
/// every figure is a difference between two scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rest_routes_and_grpc_methods_by_name() {
    let Some(app) = TestApp::spawn(crate::helpers::Backend::Sqlite).await else {
        return;
    };
    let before = scrape(&app).await;
    for _ in 0..3 {
        let (status, _) = app.get("/v1/tasks").await;
        assert_eq!(status, StatusCode::OK);
    }
    for _ in 0..2 {
        let (status, _) = app.get("/v1/task/nosuchtask").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let mut client = app.grpc().await;
    for _ in 0..2 {
        client
            .list_tasks(app.grpc_request(annotask::proto::ListTasksRequest::default()))
            .await
            .expect("listed");
    }
    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    let list = [("method", "GET"), ("route", "/v1/tasks")];
    let get = [("method", "GET"), ("route", "/v1/task/{task_id_or_type}")];
    let grpc = [
        ("method", "POST"),
        ("route", "/annotask.v1.TaskService/ListTasks"),
    ];
    for (labels, status, count) in [(&list, "200", 3.0), (&get, "404", 2.0), (&grpc, "200", 2.0)] {
        let with_status = [labels[0], labels[1], ("status", status)];
        assert_eq!(grew(REQUESTS, &with_status), count, "{labels:?}:\n{after}");
        // A histogram, not a summary: its count, and every request in the +Inf bucket.
        assert_eq!(
            grew(&format!("{DURATION}_count"), labels),
            count,
            "{labels:?}"
        );
        let all = [labels[0], labels[1], ("le", "+Inf")];
        assert_eq!(
            grew(&format!("{DURATION}_bucket"), &all),
            count,
            "{labels:?}"
        );
    }
    assert!(
        after.contains(&format!("# TYPE {DURATION} histogram")),
        "{after}"
    );
    assert!(!after.contains(&format!("{DURATION}{{quantile")), "{after}");
    // Buckets from 1 ms to 30 s, cumulative.
    let bucket = |le: &str| {
        sample(
            &after,
            &format!("{DURATION}_bucket"),
            &[list[0], list[1], ("le", le)],
        )
    };
    let bounds = ["0.001", "0.01", "0.1", "1", "10", "30", "+Inf"];
    for pair in bounds.windows(2) {
        assert!(bucket(pair[0]) <= bucket(pair[1]), "{pair:?}:\n{after}");
    }
    assert!(
        after
            .lines()
            .any(|line| line.starts_with(&format!("{DURATION}_bucket{{"))
                && line.contains(r#"route="/v1/tasks""#)
                && line.contains(r#"le="0.001""#)),
        "{after}"
    );
}

/// Waits (up to 20 s) for the gauge job's first tick, which runs as the server starts.
async fn scrape_when(app: &TestApp, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = scrape(app).await;
        if ready(&page) || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn database_pool_use_is_exported(app: TestApp) {
    const POOL: &str = "annotask_db_pool_connections";
    const MAX: &str = "annotask_db_pool_max_connections";
    // SQLite: one writer, four readers, four for read transactions; PostgreSQL: the
    // configured 32, half for writes (and read transactions), half for plain reads.
    let pools: &[(&str, f64)] = match app.backend {
        Backend::Sqlite => &[("write", 1.0), ("read", 4.0), ("snapshot", 4.0)],
        Backend::Postgres => &[("write", 16.0), ("read", 16.0)],
    };
    // The gauges are set pool by pool: wait for the last one, not the first.
    let page = scrape_when(&app, |page| {
        pools
            .iter()
            .all(|(pool, _)| page.contains(&format!("{MAX}{{pool=\"{pool}\"}}")))
    })
    .await;
    for &(pool, max) in pools {
        assert_eq!(
            sample(&page, MAX, &[("pool", pool)]),
            max,
            "{pool}:\n{page}"
        );
        let idle = sample(&page, POOL, &[("pool", pool), ("state", "idle")]);
        let in_use = sample(&page, POOL, &[("pool", pool), ("state", "in_use")]);
        // The pools keep one connection open at least.
        assert!(idle + in_use >= 1.0, "{pool}:\n{page}");
        assert!(idle + in_use <= max, "{pool}:\n{page}");
    }
    if app.backend == Backend::Postgres {
        assert!(!page.contains(r#"pool="snapshot""#), "{page}");
    }
}

fn image_body(attachment: &str) -> Value {
    json!({
        "instruction": "Draw a box around each car",
        "attachment": attachment,
        "attachment_type": "image",
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
    })
}

async fn idempotency_replays_and_conflicts_are_counted(app: TestApp) {
    const REPLAYS: &str = "annotask_idempotency_replays_total";
    const CONFLICTS: &str = "annotask_idempotency_conflicts_total";
    let keyed = |key: &str, body: &Value| {
        app.request(Method::POST, "/v1/task/imageannotation")
            .header("Idempotency-Key", key)
            .json(body)
    };
    let before = scrape(&app).await;
    let first = image_body("https://example.com/1.png");
    assert_eq!(app.send(keyed("k-1", &first)).await.0, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.send(keyed("k-1", &first)).await.0, StatusCode::OK);
    }
    let other = image_body("https://example.com/2.png");
    let (status, body) = app.send(keyed("k-1", &other)).await;
    assert!(status.is_client_error(), "{status}: {body}");

    // Identical creations at once: each answer is the one creation, a replay, or "in flight";
    // whatever the interleaving, the counters must match the answers.
    let racing = image_body("https://example.com/3.png");
    let answers = futures::future::join_all((0..20).map(|_| keyed("k-2", &racing).send())).await;
    let (mut replayed, mut in_flight) = (0.0, 0.0);
    for answer in answers {
        let answer = answer.expect("sent");
        match answer.status() {
            StatusCode::OK if answer.headers().contains_key("idempotent-replayed") => {
                replayed += 1.0
            }
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => in_flight += 1.0,
            other => panic!("unexpected {other}"),
        }
    }

    let lines = format!(
        "{}\n",
        json!({"type": "imageannotation", "instruction": "x",
               "attachment": "https://example.com/4.png",
               "geometries": {"box": {"objects_to_annotate": ["car"]}}})
    );
    let import = |body: String| {
        app.request(Method::POST, "/v1/tasks/import")
            .header("content-type", "application/x-ndjson")
            .header("Idempotency-Key", "imp-1")
            .body(body)
            .send()
    };
    // Each answer read to its end: the summary is stored once the import has finished.
    let mut replay_marks = Vec::new();
    for _ in 0..2 {
        let answer = import(lines.clone()).await.expect("sent");
        assert_eq!(answer.status(), StatusCode::OK);
        replay_marks.push(answer.headers().contains_key("idempotent-replayed"));
        answer.text().await.expect("import answer");
    }
    assert_eq!(replay_marks, [false, true]);
    let refused = import(lines.replace("4.png", "5.png")).await.expect("sent");
    assert!(refused.status().is_client_error(), "{}", refused.status());

    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let create = ("operation", "create_task");
    let bulk = ("operation", "import_tasks");
    assert_eq!(grew(REPLAYS, &[create]), 2.0 + replayed, "{after}");
    let mismatch = ("reason", "different_request");
    assert_eq!(grew(CONFLICTS, &[create, mismatch]), 1.0, "{after}");
    assert_eq!(
        grew(CONFLICTS, &[create, ("reason", "in_flight")]),
        in_flight,
        "{after}"
    );
    assert_eq!(grew(REPLAYS, &[bulk]), 1.0, "{after}");
    assert_eq!(grew(CONFLICTS, &[bulk, mismatch]), 1.0, "{after}");
    assert_eq!(grew(CONFLICTS, &[bulk, ("reason", "in_flight")]), 0.0);
}

const REQUEST_ID: &str = "x-request-id";

fn request_id_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .expect("x-request-id answered")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_or_generated_on_rest_grpc_and_grpc_web() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let rest = |id: Option<&str>| {
        let mut request = app.request(Method::GET, "/v1/task/nosuchtask");
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        async move {
            let response = request.send().await.expect("sent");
            let id = request_id_of(response.headers());
            // The error body keeps Scale's shape: no id in it.
            let body: Value = response.json().await.expect("json");
            assert_eq!(body.as_object().map(|body| body.len()), Some(2), "{body}");
            id
        }
    };
    assert_eq!(rest(Some("client-id-1")).await, "client-id-1");
    let longest = "a".repeat(128);
    assert_eq!(rest(Some(&longest)).await, longest);
    let (first, second) = (rest(None).await, rest(None).await);
    assert!(!first.is_empty() && first != second, "{first} {second}");
    for unusable in ["has space", &"a".repeat(129), "caf\u{e9}"] {
        let replaced = rest(Some(unusable)).await;
        assert_ne!(replaced, unusable);
        assert_eq!(replaced.len(), first.len(), "{replaced}");
    }

    // gRPC: the id comes back as response metadata, on success and on error.
    let mut client = app.grpc().await;
    let mut request = app.grpc_request(annotask::proto::ListTasksRequest::default());
    request
        .metadata_mut()
        .insert(REQUEST_ID, "grpc-id-1".parse().expect("metadata"));
    let listed = client.list_tasks(request).await.expect("listed");
    assert_eq!(
        listed.metadata().get(REQUEST_ID).map(|id| id.to_str().ok()),
        Some(Some("grpc-id-1"))
    );
    let mut request = app.grpc_request(annotask::proto::GetTaskRequest {
        task_id: "nosuchtask".to_owned(),
    });
    request
        .metadata_mut()
        .insert(REQUEST_ID, "grpc-id-2".parse().expect("metadata"));
    let refused = client.get_task(request).await.expect_err("no such task");
    assert_eq!(
        refused
            .metadata()
            .get(REQUEST_ID)
            .map(|id| id.to_str().ok()),
        Some(Some("grpc-id-2"))
    );

    // grpc-web from a browser: echoed, and readable through CORS.
    let response = app
        .http
        .post(app.url("/annotask.v1.TaskService/ListTasks"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "https://app.example.com")
        .header("authorization", format!("Bearer {}", app.api_key))
        .header(REQUEST_ID, "web-id-1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(request_id_of(response.headers()), "web-id-1");
    let exposed = response
        .headers()
        .get("access-control-expose-headers")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(exposed.contains(REQUEST_ID), "{exposed}");
}

/// The request's log lines carry its id: the binary logs JSON to stderr, read after it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_carries_its_id() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_annotask"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &app.database_url])
        .env("RUST_LOG", "info")
        .env("ANNOTASK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn annotask");
    let base_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app
        .http
        .get(format!("{base_url}/healthz"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(Instant::now() < deadline, "annotask did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let create = |id: Option<&str>| {
        let mut request = app
            .http
            .post(format!("{base_url}/v1/task/imageannotation"))
            .basic_auth(&app.api_key, Some(""))
            .json(&image_body("https://example.com/logged.png"));
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), StatusCode::OK);
            let id = request_id_of(response.headers());
            let task: Value = response.json().await.expect("json");
            (id, task["task_id"].as_str().expect("task_id").to_owned())
        }
    };
    let sent = create(Some("log-me-1")).await;
    let generated = create(None).await;
    let _ = child.kill();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut logs)
        .expect("logs read");
    let _ = child.wait();

    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    for (id, task_id) in [sent, generated] {
        let of_task: Vec<&Value> = lines
            .iter()
            .filter(|line| line["fields"]["task_id"] == json!(task_id))
            .collect();
        assert!(!of_task.is_empty(), "no log line for {task_id}:\n{logs}");
        for line in of_task {
            assert_eq!(line["span"]["request_id"], json!(id), "{line}");
        }
    }
}
