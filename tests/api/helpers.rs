//! Spawns the real server on an ephemeral port over a database made for one test, and
//! gives each test typed helpers for REST, gRPC and grpc-web.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use annotask::{
    config::Config, domain::Role, proto::task_service_client::TaskServiceClient, server::App,
    service::Service,
};
use rand::Rng;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the test PostgreSQL server is (any database on it: each test makes its own).
pub fn postgres_admin_url() -> String {
    std::env::var("ANNOTASK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Skips a test whose prerequisite is missing, loudly; under CI a skip is a failure.
pub fn skip(reason: &str) {
    assert!(!running_in_ci(), "CI must not skip tests: {reason}");
    eprintln!("SKIPPED: {reason}");
}

fn random_suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// A database that exists for one test and is dropped after it.
pub enum TestDb {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// Always `Some`: a backend that cannot be reached fails the test (the `Option` is kept
    /// for the callers written when it could be skipped).
    pub async fn create(backend: Backend) -> Option<(TestDb, String)> {
        match backend {
            Backend::Sqlite => {
                let path =
                    std::env::temp_dir().join(format!("annotask-test-{}.db", random_suffix()));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                Some((TestDb::Sqlite(path), url))
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                // An unreachable PostgreSQL fails the test, in CI or not: a skip would read as
                // a pass. To run without it, leave these tests out by name instead.
                let admin = Database::connect(&admin_url).await.unwrap_or_else(|err| {
                    panic!(
                        "PostgreSQL unreachable at {admin_url} (set ANNOTASK_TEST_POSTGRES_URL, or \
                         run without these tests: cargo nextest run -E 'not test(/postgres/)'): {err}"
                    )
                });
                let name = format!("annotask_test_{}", random_suffix());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(base, _)| base);
                let url = format!("{base}/{name}");
                Some((TestDb::Postgres { admin_url, name }, url))
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            TestDb::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            TestDb::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime; a fresh thread may block on its own one.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        if let Ok(admin) = Database::connect(&admin_url).await {
                            let _ = admin
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                ))
                                .await;
                            let _ = admin.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub database_url: String,
    /// A live key of a fresh account, named `account`.
    pub api_key: String,
    pub account: String,
    pub http: reqwest::Client,
    pub service: Arc<Service>,
    pub backend: Backend,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    // Declared last: dropped after the server has stopped.
    _db: TestDb,
}

impl TestApp {
    /// Always `Some` (see `TestDb::create`).
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let (db, database_url) = TestDb::create(backend).await?;
        let mut config = Config::new(database_url.clone());
        // Every test client is 127.0.0.1: tests of failures would trip the per-address limit
        // of failed authentications. The tests of that limit turn it back on.
        config.auth_failures_per_minute = 0;
        adjust(&mut config);
        let app = App::open(config).await.expect("open app");
        let service = app.service.clone();
        let account = format!("account-{}", random_suffix());
        let api_key = service
            .create_api_key(&account, false, Role::Admin)
            .await
            .expect("create api key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        Some(TestApp {
            addr,
            base_url: format!("http://{addr}"),
            database_url,
            api_key,
            account,
            http: reqwest::Client::new(),
            service,
            backend,
            shutdown: Some(shutdown),
            server: Some(server),
            _db: db,
        })
    }

    /// A key for a new account (`is_test` for the test world).
    pub async fn new_account_key(&self, is_test: bool) -> String {
        self.service
            .create_api_key(
                &format!("account-{}", random_suffix()),
                is_test,
                Role::Admin,
            )
            .await
            .expect("create api key")
    }

    /// A worker-scoped live key of this app's account.
    pub async fn worker_key(&self) -> String {
        self.service
            .create_api_key(&self.account, false, Role::Worker)
            .await
            .expect("create worker key")
    }

    /// Another key of the same account as `api_key`, for its test world.
    pub async fn key_for_same_account(&self, account: &str, is_test: bool) -> String {
        self.service
            .create_api_key(account, is_test, Role::Admin)
            .await
            .expect("create api key")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A REST request with this app's key as HTTP Basic user name, as Scale's client sends it.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(&self.api_key, method, path)
    }

    pub fn request_as(&self, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .basic_auth(key, Some(""))
    }

    /// Sends, and returns the status and the body parsed as JSON (every answer is JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {text}"));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// Creates a project of `task_type` (no params), which tasks may then name.
    pub async fn create_project(&self, name: &str, task_type: &str) -> Value {
        let (status, project) = self
            .post(
                "/v1/projects",
                &serde_json::json!({"name": name, "type": task_type}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create project {name}: {project}");
        project
    }

    /// Creates a batch in `project`; extra fields are merged into the body.
    pub async fn create_batch(&self, name: &str, project: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"name": name, "project": project});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let (status, batch) = self.post("/v1/batches", &body).await;
        assert_eq!(status, StatusCode::OK, "create batch {name}: {batch}");
        batch
    }

    /// Creates an image annotation task; extra fields are merged into the body.
    pub async fn create_image_task(&self, extra: Value) -> (StatusCode, Value) {
        let mut body = serde_json::json!({
            "instruction": "Draw a box around each car",
            "attachment": "https://example.com/car.png",
            "attachment_type": "image",
            "geometries": {"box": {"objects_to_annotate": ["car"]}},
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.post("/v1/task/imageannotation", &body).await
    }

    pub async fn grpc(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::connect(self.base_url.clone())
            .await
            .expect("grpc connect")
    }

    /// A gRPC request carrying this app's key.
    pub fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        grpc_request_as(&self.api_key, message)
    }
}

pub fn grpc_request_as<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("metadata value"),
    );
    request
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Runs each listed `async fn name(app: TestApp)` once per backend, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}
