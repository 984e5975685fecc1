//! PostgreSQL going away under load, staged with a TCP proxy between the real `annotask`
//! binary and the machine's PostgreSQL (which other tests keep using): requests fail fast
//! with 503 / UNAVAILABLE (never a 500, never a hang), `/healthz` says 503, and service
//! resumes by itself once the database is reachable again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    helpers::{Backend, TestApp},
    process::ServerProcess,
};

/// What the proxy does with PostgreSQL traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Open connections are closed; new ones are accepted and closed at once.
    Cut,
    /// Open connections are closed; new ones are accepted and then left silent.
    Silent,
}

struct FaultyProxy {
    port: u16,
    link: watch::Sender<Link>,
}

impl FaultyProxy {
    async fn start(upstream: String) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (link, watching) = watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), watching.clone()));
            }
        });
        FaultyProxy { port, link }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

async fn relay(mut client: TcpStream, upstream: String, mut link: watch::Receiver<Link>) {
    let now = *link.borrow_and_update();
    match now {
        Link::Cut => return,
        Link::Silent => {
            // Holds the socket without a byte until the link changes.
            let _ = link.changed().await;
            return;
        }
        Link::Up => {}
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = link.wait_for(|link| *link != Link::Up) => {}
    }
}

/// Short timeouts so a fault shows within seconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// The acquire timeout plus slack for a loaded 2-core machine, but under twice the timeout: a
/// request that waits out the timeout twice (queued behind a failing create group, retried
/// one by one after a group failed) is not failing fast.
const FAIL_FAST_BOUND: Duration = Duration::from_millis(3500);

struct Faulted {
    app: TestApp,
    proxy: FaultyProxy,
    server: ServerProcess,
}

async fn server_behind_proxy() -> Option<Faulted> {
    let app = TestApp::spawn_with(Backend::Postgres, |config| {
        config.database.max_connections = 2;
    })
    .await?;
    let url = url::Url::parse(&app.database_url).expect("database url");
    let upstream = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().unwrap_or(5432)
    );
    let proxy = FaultyProxy::start(upstream).await;
    let mut proxied = url.clone();
    proxied.set_port(Some(proxy.port)).expect("port");
    let acquire = format!("{}s", ACQUIRE_TIMEOUT.as_secs());
    let server = ServerProcess::start_with_env(
        proxied.as_str(),
        &[
            ("ANNOTASK_DATABASE_MAX_CONNECTIONS", "6"),
            ("ANNOTASK_DATABASE_ACQUIRE_TIMEOUT", &acquire),
        ],
    )
    .await;
    Some(Faulted { app, proxy, server })
}

/// Every answer the load got while the database was away.
#[derive(Default)]
struct Observed {
    /// (status, reason, latency) per request.
    answers: Mutex<Vec<(StatusCode, String, Duration)>>,
}

/// Creates and reads tasks in a loop until `stop`, recording every answer.
fn load(
    faulted: &Faulted,
    clients: usize,
    stop: Arc<AtomicBool>,
    observed: Arc<Observed>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let http = reqwest::Client::new();
            let base_url = faulted.server.base_url.clone();
            let key = faulted.app.api_key.clone();
            let (stop, observed) = (stop.clone(), observed.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = if n % 2 == 0 {
                        http.get(format!("{base_url}/v1/tasks?limit=5"))
                    } else {
                        http.post(format!("{base_url}/v1/task/imageannotation"))
                            .json(&json!({"attachment": format!("https://e.com/{client}-{n}.png"), "geometries": {"box": {}}}))
                    };
                    let started = Instant::now();
                    // A hang shows as this client-side timeout (recorded as 504 below).
                    let answer = request
                        .basic_auth(&key, Some(""))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    let (status, reason) = match answer {
                        Ok(answer) => {
                            let status = answer.status();
                            let body: Value = answer.json().await.unwrap_or(Value::Null);
                            (status, body["error"].as_str().unwrap_or_default().to_owned())
                        }
                        Err(err) => (StatusCode::GATEWAY_TIMEOUT, err.to_string()),
                    };
                    observed
                        .answers
                        .lock()
                        .expect("lock")
                        .push((status, reason, started.elapsed()));
                }
            })
        })
        .collect()
}

async fn healthz(faulted: &Faulted) -> StatusCode {
    faulted
        .app
        .http
        .get(format!("{}/healthz", faulted.server.base_url))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(StatusCode::GATEWAY_TIMEOUT, |answer| answer.status())
}

/// Waits until a create succeeds again; returns how long that took.
async fn time_to_recover(faulted: &Faulted) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _) = faulted
            .app
            .send(
                faulted
                    .app
                    .http
                    .post(format!(
                        "{}/v1/task/imageannotation",
                        faulted.server.base_url
                    ))
                    .basic_auth(&faulted.app.api_key, Some(""))
                    .json(
                        &json!({"attachment": "https://e.com/back.png", "geometries": {"box": {}}}),
                    ),
            )
            .await;
        if status == StatusCode::OK {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "service did not resume by itself: last status {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the database goes away.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Staged by the proxy, so the rest of the suite keeps its PostgreSQL.
    Proxy(Link),
    /// The machine's PostgreSQL really stopped (`pg_ctlcluster stop -m fast`), then started.
    StopPostgres,
}

impl Fault {
    async fn inject(self, faulted: &Faulted) {
        match self {
            Fault::Proxy(link) => faulted.proxy.set(link),
            Fault::StopPostgres => pg_ctlcluster("stop").await,
        }
    }

    async fn repair(self, faulted: &Faulted) {
        match self {
            Fault::Proxy(_) => faulted.proxy.set(Link::Up),
            Fault::StopPostgres => pg_ctlcluster("start").await,
        }
    }
}

/// Stops or starts the machine's one PostgreSQL cluster (Debian's wrapper).
async fn pg_ctlcluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    let mut command = tokio::process::Command::new("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        command.args(["--", "-m", "fast"]);
    }
    let status = command.status().await.expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}: {status}");
}

async fn a_lost_database_is_answered_503_fast_and_service_resumes_by_itself(fault: Fault) {
    let Some(faulted) = server_behind_proxy().await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Observed::default());
    let clients = load(&faulted, 4, stop.clone(), observed.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    fault.inject(&faulted).await;
    let cut_at = Instant::now();
    tokio::time::sleep(ACQUIRE_TIMEOUT * 3).await;
    let health = healthz(&faulted).await;
    let first_503 = observed
        .answers
        .lock()
        .expect("lock")
        .iter()
        .any(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("load client");
    }
    let during: Vec<_> = std::mem::take(&mut *observed.answers.lock().expect("lock"));

    fault.repair(&faulted).await;
    let recovery = time_to_recover(&faulted).await;
    let health_after = healthz(&faulted).await;

    let unavailable: Vec<_> = during
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let worst = unavailable
        .iter()
        .map(|(_, _, latency)| *latency)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{fault:?}: {} requests during the fault, {} answered 503, worst 503 latency {worst:?} (acquire timeout {ACQUIRE_TIMEOUT:?}), /healthz {health}, recovered {recovery:?} after the link came back ({:?} after the fault)",
        during.len(),
        unavailable.len(),
        cut_at.elapsed()
    );
    assert!(first_503, "the load met the fault");
    for (status, reason, latency) in &during {
        assert!(
            status.is_success() || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} after {latency:?}: {reason}"
        );
        assert!(*latency < FAIL_FAST_BOUND, "{status} took {latency:?}");
    }
    assert!(
        unavailable
            .iter()
            .all(|(_, reason, _)| reason.contains("temporarily unavailable")),
        "{unavailable:?}"
    );
    assert_eq!(health, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health_after, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_database_is_answered_503_fast_and_service_resumes_by_itself() {
    a_lost_database_is_answered_503_fast_and_service_resumes_by_itself(Fault::Proxy(Link::Cut))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_is_answered_503_within_the_acquire_timeout_and_resumes() {
    a_lost_database_is_answered_503_fast_and_service_resumes_by_itself(Fault::Proxy(Link::Silent))
        .await;
}

/// The real thing: the machine's PostgreSQL stopped and started again under load. Every other
/// test loses its database meanwhile, so it runs alone, on request:
/// `cargo nextest run --test api --run-ignored only -E 'test(/real_postgresql_restart/)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the machine's PostgreSQL: run it alone"]
async fn a_real_postgresql_restart_is_answered_503_fast_and_service_resumes_by_itself() {
    a_lost_database_is_answered_503_fast_and_service_resumes_by_itself(Fault::StopPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_without_a_database_is_unavailable() {
    let Some(faulted) = server_behind_proxy().await else {
        return;
    };
    faulted.proxy.set(Link::Cut);
    let channel = tonic::transport::Channel::from_shared(faulted.server.base_url.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut tasks = annotask::proto::task_service_client::TaskServiceClient::new(channel);
    let started = Instant::now();
    let answer = tasks
        .get_task(crate::helpers::grpc_request_as(
            &faulted.app.api_key,
            annotask::proto::GetTaskRequest {
                task_id: "0123456789abcdef01234567".to_owned(),
            },
        ))
        .await;
    let status = answer.expect_err("no database, no task");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < FAIL_FAST_BOUND);
}

/// A restarted PostgreSQL, a pooler or a firewall kills connections while they sit idle: the
/// next request must not be the one to find out. A connection idle past the pool's trusted
/// window is checked before use, and replaced if dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_while_idle_are_replaced_before_use() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let (status, task) = app
        .send(
            app.http
                .post(app.url("/v1/task/imageannotation"))
                .basic_auth(&app.api_key, Some(""))
                .json(&json!({"attachment": "https://e.com/a.png", "geometries": {"box": {}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let path = format!("/v1/task/{}", task["task_id"].as_str().expect("task_id"));
    let reads = || futures_util::future::join_all((0..8).map(|_| async { app.get(&path).await.0 }));
    // Several connections in the pool, then every one of them killed while idle.
    assert!(reads().await.iter().all(|status| *status == StatusCode::OK));
    let admin = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let killed = sea_orm::ConnectionTrait::query_all(
        &admin,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ),
    )
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the server had connections to kill");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reads().await;
    assert!(
        after.iter().all(|status| *status == StatusCode::OK),
        "a request met a connection killed while idle: {after:?}"
    );
}
