//! The authorization matrix (SPEC §2): every REST route and every RPC, each called by every
//! kind of caller that must not reach the owner's objects. Bad credentials get 401 /
//! `UNAUTHENTICATED`; another account's key, and a key of the owner's other world, get 404 /
//! `NOT_FOUND` on the owner's objects and lists without them; no answer ever carries the owner's
//! ids, lease token or metadata markers. Both tables are checked against what the server
//! really serves (the route registrations in src/api/rest, the proto descriptor), so a new
//! route or RPC cannot be left out.

use std::collections::BTreeSet;

use annotask::proto::{
    self, batch_service_client::BatchServiceClient, project_service_client::ProjectServiceClient,
    task_service_client::TaskServiceClient, work_service_client::WorkServiceClient,
};
use prost::Message as _;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tonic::{transport::Channel, Code, Request, Status};

use crate::{
    backend_tests,
    grpc::{image_params, to_struct},
    helpers::{Backend, TestApp},
};

// ---------------------------------------------------------------------------------------------
// Who calls, and on what
// ---------------------------------------------------------------------------------------------

/// The owner's objects in one world, and what must never reach anyone else.
struct Target {
    task_id: String,
    /// A task under a live lease (the live world only; the test world's tasks complete at once).
    lease_task_id: String,
    lease_token: String,
    project: String,
    batch: String,
    unique_id: String,
}

/// What a response may never contain, for a caller outside the owner's world.
struct Secrets(Vec<String>);

impl Secrets {
    fn assert_absent(&self, what: &str, text: &str) {
        for secret in &self.0 {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: the answer leaks the owner's {secret:?}: {text}"
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Bad credentials: 401 / `UNAUTHENTICATED`, whatever the route.
    Unauthenticated,
    /// A valid key outside the owner's world: per route (404, or 200 without the owner's data).
    OutsideWorld,
}

struct Identity {
    name: &'static str,
    /// The whole `Authorization` value; `None` sends none.
    authorization: Option<String>,
    expect: Expect,
    /// Aims at the owner's test-world objects instead of the live ones.
    aims_at_test_world: bool,
    /// The owner's world this key legitimately sees, if any.
    sees: Option<WorldName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorldName {
    Live,
    Test,
}

/// Every identity of the matrix, over the owner's objects: the owner is `app.api_key` (live)
/// and a test key of the same account.
async fn identities(app: &TestApp, owner_test_key: &str) -> Vec<Identity> {
    let revoked = app.key_for_same_account(&app.account, false).await;
    app.service
        .revoke_api_key(&app.account, &revoked[..12])
        .await
        .expect("revoke");
    let other_account = app.new_account_key(false).await;
    let bearer = |key: &str| Some(format!("Bearer {key}"));
    let bad = |name, authorization| Identity {
        name,
        authorization,
        expect: Expect::Unauthenticated,
        aims_at_test_world: false,
        sees: None,
    };
    vec![
        bad("no key", None),
        bad("malformed key", bearer("not-an-api-key")),
        bad(
            "unknown key",
            bearer("live_00000000000000000000000000000000deadbeef"),
        ),
        bad("revoked key of the owner's account", bearer(&revoked)),
        Identity {
            name: "another account's live key",
            authorization: bearer(&other_account),
            expect: Expect::OutsideWorld,
            aims_at_test_world: false,
            sees: None,
        },
        Identity {
            name: "the owner's test key on live objects",
            authorization: bearer(owner_test_key),
            expect: Expect::OutsideWorld,
            aims_at_test_world: false,
            sees: Some(WorldName::Test),
        },
        // Last: claiming with it leases the owner's live tasks (its own world, legitimately).
        Identity {
            name: "the owner's live key on test objects",
            authorization: bearer(&app.api_key),
            expect: Expect::OutsideWorld,
            aims_at_test_world: true,
            sees: Some(WorldName::Live),
        },
    ]
}

/// A project, a batch, a task with metadata and a unique_id, and (live world) a leased task,
/// every one carrying `marker`.
async fn seed_world(app: &TestApp, key: &str, world: &str, marker: &str) -> Target {
    let post = |path: &str, body: Value| {
        let request = app.request_as(key, Method::POST, path).json(&body);
        async move { app.send(request).await }
    };
    let project = format!("authz-project-{world}");
    let (status, answer) = post(
        "/v1/projects",
        json!({"name": project, "type": "imageannotation", "params": {"instruction": marker}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let batch = format!("authz-batch-{world}");
    let (status, answer) = post(
        "/v1/batches",
        json!({"name": batch, "project": project, "metadata": {"marker": marker}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut task = image_params();
    let task_fields = task.as_object_mut().expect("object");
    let lease_body = Value::Object(task_fields.clone());
    let (status, lease_task) = post("/v1/task/imageannotation", lease_body).await;
    assert_eq!(status, StatusCode::OK, "{lease_task}");
    let unique_id = format!("authz-unique-{world}");
    task_fields.insert("metadata".to_owned(), json!({"marker": marker}));
    task_fields.insert("unique_id".to_owned(), json!(unique_id));
    task_fields.insert("project".to_owned(), json!(project));
    task_fields.insert("batch".to_owned(), json!(batch));
    let (status, answer) = post("/v1/task/imageannotation", task).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let task_id = answer["task_id"].as_str().expect("task_id").to_owned();
    let (lease_task_id, lease_token) = if world == "live" {
        // The oldest pending task: the one made first for this.
        let (status, claimed) = post("/v1/work/claim", json!({"limit": 1})).await;
        assert_eq!(status, StatusCode::OK, "{claimed}");
        let lease = &claimed["leases"][0];
        assert_eq!(lease["task"]["task_id"], lease_task["task_id"], "{claimed}");
        (
            lease_task["task_id"].as_str().expect("task_id").to_owned(),
            lease["lease_token"].as_str().expect("token").to_owned(),
        )
    } else {
        // Test-world tasks complete at once and cannot be leased: a made-up token.
        (
            lease_task["task_id"].as_str().expect("task_id").to_owned(),
            "lease_0000000000000000".to_owned(),
        )
    };
    Target {
        task_id,
        lease_task_id,
        lease_token,
        project,
        batch,
        unique_id,
    }
}

struct World {
    live: Target,
    test: Target,
    owner_test_key: String,
    live_secrets: Vec<String>,
    test_secrets: Vec<String>,
}

async fn seed(app: &TestApp) -> World {
    let owner_test_key = app.key_for_same_account(&app.account, true).await;
    let live_marker = format!("LIVE-MARKER-{}", &app.account);
    let test_marker = format!("TEST-MARKER-{}", &app.account);
    let live = seed_world(app, &app.api_key, "live", &live_marker).await;
    let test = seed_world(app, &owner_test_key, "test", &test_marker).await;
    let secrets = |target: &Target, marker: String| {
        let mut secrets = vec![target.task_id.clone(), target.lease_task_id.clone(), marker];
        if target.lease_token.len() > 20 {
            secrets.push(target.lease_token.clone());
        }
        secrets
    };
    World {
        live_secrets: secrets(&live, live_marker),
        test_secrets: secrets(&test, test_marker),
        live,
        test,
        owner_test_key,
    }
}

impl World {
    fn target(&self, identity: &Identity) -> &Target {
        if identity.aims_at_test_world {
            &self.test
        } else {
            &self.live
        }
    }

    /// What the identity must never see: every secret but those of the world it belongs to.
    fn secrets(&self, identity: &Identity) -> Secrets {
        let mut secrets = Vec::new();
        if identity.sees != Some(WorldName::Live) {
            secrets.extend(self.live_secrets.iter().cloned());
        }
        if identity.sees != Some(WorldName::Test) {
            secrets.extend(self.test_secrets.iter().cloned());
        }
        Secrets(secrets)
    }
}

// ---------------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------------

/// What a valid key outside the owner's world gets from a route.
#[derive(Clone, Copy, Debug)]
enum RestKind {
    /// Names one of the owner's objects in its path: 404.
    Object,
    /// Lists or claims within the caller's own world: 200, with nothing of the owner's.
    List,
    /// Creates in the caller's own world, naming the owner's unique_id or names: this status.
    Create(StatusCode),
}

/// Every route under /v1 that needs a key. Creations come last, so the objects they make
/// cannot answer an earlier lookup by the owner's names.
const REST_ROUTES: &[(&str, &str, RestKind)] = &[
    ("GET", "/task/{task_id_or_type}", RestKind::Object),
    ("GET", "/tasks", RestKind::List),
    ("POST", "/task/{task_id}/cancel", RestKind::Object),
    ("POST", "/task/{task_id}/setMetadata", RestKind::Object),
    ("POST", "/task/{task_id}/unique_id", RestKind::Object),
    ("DELETE", "/task/{task_id}/unique_id", RestKind::Object),
    ("POST", "/task/{task_id}/tags", RestKind::Object),
    ("PUT", "/task/{task_id}/tags", RestKind::Object),
    ("DELETE", "/task/{task_id}/tags", RestKind::Object),
    ("POST", "/task/{task_id}/audit", RestKind::Object),
    ("GET", "/tasks/export", RestKind::List),
    ("POST", "/work/claim", RestKind::List),
    ("POST", "/task/{task_id}/lease/heartbeat", RestKind::Object),
    ("POST", "/task/{task_id}/lease/release", RestKind::Object),
    ("POST", "/task/{task_id}/complete", RestKind::Object),
    ("POST", "/task/{task_id}/fail", RestKind::Object),
    ("GET", "/projects", RestKind::List),
    ("GET", "/projects/{name}", RestKind::Object),
    ("POST", "/projects/{name}/setParams", RestKind::Object),
    ("GET", "/batches", RestKind::List),
    ("GET", "/batches/{name}", RestKind::Object),
    ("POST", "/batches/{name}/finalize", RestKind::Object),
    ("GET", "/batches/{name}/status", RestKind::Object),
    ("POST", "/batches/{name}/setMetadata", RestKind::Object),
    // The owner's project is not the caller's: the 400 of a project that does not exist (a
    // 409, or any other answer, would tell the name exists).
    (
        "POST",
        "/batches",
        RestKind::Create(StatusCode::BAD_REQUEST),
    ),
    // Names and unique_ids are per world: the owner's are free here.
    ("POST", "/projects", RestKind::Create(StatusCode::OK)),
    (
        "POST",
        "/task/{task_id_or_type}",
        RestKind::Create(StatusCode::OK),
    ),
    ("POST", "/tasks/import", RestKind::Create(StatusCode::OK)),
];

/// Routes that need no key, on purpose.
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// The path and body of one route's request against `target`.
fn rest_call(method: &str, pattern: &str, target: &Target) -> (String, Option<String>) {
    let lease = |extra: Value| {
        let mut body = json!({"lease_token": target.lease_token});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        Some(body.to_string())
    };
    let task_id = &target.task_id;
    let lease_task = &target.lease_task_id;
    let (project, batch) = (&target.project, &target.batch);
    let (path, body) = match (method, pattern) {
        ("GET", "/task/{task_id_or_type}") => (format!("/task/{task_id}"), None),
        ("GET", "/tasks") => ("/tasks?limit=100".to_owned(), None),
        ("POST", "/task/{task_id}/cancel") => (format!("/task/{task_id}/cancel"), None),
        ("POST", "/task/{task_id}/setMetadata") => (
            format!("/task/{task_id}/setMetadata"),
            Some(json!({"changed": true}).to_string()),
        ),
        ("POST", "/task/{task_id}/unique_id") => (
            format!("/task/{task_id}/unique_id"),
            Some(json!({"unique_id": "authz-renamed"}).to_string()),
        ),
        ("DELETE", "/task/{task_id}/unique_id") => (format!("/task/{task_id}/unique_id"), None),
        ("POST" | "PUT" | "DELETE", "/task/{task_id}/tags") => (
            format!("/task/{task_id}/tags"),
            Some(json!(["authz"]).to_string()),
        ),
        ("POST", "/task/{task_id}/audit") => (
            format!("/task/{task_id}/audit"),
            Some(json!({"accepted": true}).to_string()),
        ),
        ("GET", "/tasks/export") => ("/tasks/export".to_owned(), None),
        ("POST", "/work/claim") => ("/work/claim".to_owned(), Some("{}".to_owned())),
        ("POST", "/task/{task_id}/lease/heartbeat") => (
            format!("/task/{lease_task}/lease/heartbeat"),
            lease(json!({})),
        ),
        ("POST", "/task/{task_id}/lease/release") => (
            format!("/task/{lease_task}/lease/release"),
            lease(json!({})),
        ),
        ("POST", "/task/{task_id}/complete") => (
            format!("/task/{lease_task}/complete"),
            lease(json!({"response": {"annotations": []}})),
        ),
        ("POST", "/task/{task_id}/fail") => (
            format!("/task/{lease_task}/fail"),
            lease(json!({"error": "authz"})),
        ),
        ("GET", "/projects") => ("/projects".to_owned(), None),
        ("GET", "/projects/{name}") => (format!("/projects/{project}"), None),
        ("POST", "/projects/{name}/setParams") => (
            format!("/projects/{project}/setParams"),
            Some(json!({"params": {"instruction": "authz"}}).to_string()),
        ),
        ("GET", "/batches") => ("/batches".to_owned(), None),
        ("GET", "/batches/{name}") => (format!("/batches/{batch}"), None),
        ("POST", "/batches/{name}/finalize") => (format!("/batches/{batch}/finalize"), None),
        ("GET", "/batches/{name}/status") => (format!("/batches/{batch}/status"), None),
        ("POST", "/batches/{name}/setMetadata") => (
            format!("/batches/{batch}/setMetadata"),
            Some(json!({"changed": true}).to_string()),
        ),
        ("POST", "/batches") => (
            "/batches".to_owned(),
            Some(json!({"name": batch, "project": project}).to_string()),
        ),
        ("POST", "/projects") => (
            "/projects".to_owned(),
            Some(json!({"name": project, "type": "imageannotation"}).to_string()),
        ),
        ("POST", "/task/{task_id_or_type}") => {
            let mut task = image_params();
            task["unique_id"] = json!(target.unique_id);
            ("/task/imageannotation".to_owned(), Some(task.to_string()))
        }
        ("POST", "/tasks/import") => {
            let mut task = image_params();
            task["type"] = json!("imageannotation");
            task["unique_id"] = json!(format!("{}-import", target.unique_id));
            let mut in_project = task.clone();
            in_project["project"] = json!(project);
            (
                "/tasks/import".to_owned(),
                Some(format!("{task}\n{in_project}\n")),
            )
        }
        other => panic!("no request written for route {other:?}"),
    };
    (format!("/v1{path}"), body)
}

async fn send_rest(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<String>,
    authorization: Option<&str>,
) -> (StatusCode, String) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = app.http.request(method, app.url(path));
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    if let Some(body) = body {
        let content_type = if path.ends_with("/import") {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        request = request
            .header(header::CONTENT_TYPE, content_type)
            .body(body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    (status, response.text().await.expect("body read"))
}

/// The routes the server registers: every `/v1` route is registered through `utoipa_axum`'s
/// `routes!`, which puts it in the served OpenAPI document in the same step, so the document
/// lists them; the few registered with a plain `.route(` (ops, the document itself) are read
/// from the source.
async fn registered_rest_routes(app: &TestApp) -> BTreeSet<(String, String)> {
    let document: Value = reqwest::get(app.url("/v1/openapi.json"))
        .await
        .expect("GET /v1/openapi.json")
        .json()
        .await
        .expect("an OpenAPI document");
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/rest");
    for entry in std::fs::read_dir(&dir).expect("src/api/rest") {
        let source = std::fs::read_to_string(entry.expect("entry").path()).expect("source");
        for registration in source.split(".route(").skip(1) {
            let registration = registration.trim_start();
            let Some(path) = registration
                .strip_prefix('"')
                .and_then(|rest| rest.split_once('"'))
                .map(|(path, _)| path.to_owned())
            else {
                // Only the document's own route is registered by a constant.
                assert!(
                    registration.starts_with("openapi::PATH"),
                    "a route whose path is not a literal: {registration}"
                );
                routes.insert(("GET".to_owned(), "/openapi.json".to_owned()));
                continue;
            };
            let method_router = registration
                .split_once(')')
                .map_or(registration, |(head, _)| head);
            let methods = ["get", "post", "put", "delete", "patch", "any"];
            let mut found = 0;
            for word in method_router.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if methods.contains(&word) {
                    routes.insert((word.to_ascii_uppercase(), path.clone()));
                    found += 1;
                }
            }
            assert!(found > 0, "route {path} with no method: {method_router}");
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_table_lists_every_registered_route() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let registered = registered_rest_routes(&app).await;
    let listed: BTreeSet<(String, String)> = REST_ROUTES
        .iter()
        .map(|(method, path, _)| ((*method).to_owned(), (*path).to_owned()))
        .chain(
            PUBLIC_ROUTES
                .iter()
                .map(|(method, path)| ((*method).to_owned(), (*path).to_owned())),
        )
        .collect();
    assert_eq!(
        listed.len(),
        REST_ROUTES.len() + PUBLIC_ROUTES.len(),
        "a route is listed twice"
    );
    assert_eq!(
        (
            registered.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&registered).collect::<Vec<_>>()
        ),
        (vec![], vec![]),
        "(registered but not in REST_ROUTES, listed but not registered): add new routes to the table"
    );
}

async fn rest_matrix(app: TestApp) {
    let world = seed(&app).await;
    let identities = identities(&app, &world.owner_test_key).await;
    let mut cells = 0;
    for identity in &identities {
        let target = world.target(identity);
        let secrets = world.secrets(identity);
        for &(method, pattern, kind) in REST_ROUTES {
            let (path, body) = rest_call(method, pattern, target);
            let (status, text) =
                send_rest(&app, method, &path, body, identity.authorization.as_deref()).await;
            let what = format!("{} on {method} {pattern} ({path})", identity.name);
            let expected = match (identity.expect, kind) {
                (Expect::Unauthenticated, _) => StatusCode::UNAUTHORIZED,
                (Expect::OutsideWorld, RestKind::Object) => StatusCode::NOT_FOUND,
                (Expect::OutsideWorld, RestKind::List) => StatusCode::OK,
                (Expect::OutsideWorld, RestKind::Create(status)) => status,
            };
            assert_eq!(status, expected, "{what}: {text}");
            if status != StatusCode::OK {
                let error: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|err| panic!("{what}: not a JSON error ({err}): {text}"));
                assert_eq!(error["status_code"], status.as_u16(), "{what}: {text}");
            }
            secrets.assert_absent(&what, &text);
            cells += 1;
        }
    }
    // The owner reaches every object the matrix aimed at: its 404s were about tenancy, not
    // a wrong path or body.
    for (key, target) in [
        (app.api_key.clone(), &world.live),
        (world.owner_test_key.clone(), &world.test),
    ] {
        for &(method, pattern, kind) in REST_ROUTES {
            if !matches!(kind, RestKind::Object) {
                continue;
            }
            let (path, body) = rest_call(method, pattern, target);
            let authorization = format!("Bearer {key}");
            let (status, text) = send_rest(&app, method, &path, body, Some(&authorization)).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::UNAUTHORIZED,
                "the owner on {method} {path}: {status} {text}"
            );
        }
    }
    println!(
        "REST authorization matrix: {} routes x {} identities = {cells} requests",
        REST_ROUTES.len(),
        identities.len()
    );
    assert_eq!(cells, REST_ROUTES.len() * identities.len());
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

/// What a valid key outside the owner's world gets from an RPC.
#[derive(Clone, Copy, Debug)]
enum RpcKind {
    Object,
    List,
    Create(Code),
}

const RPCS: &[(&str, RpcKind)] = &[
    ("TaskService/GetTask", RpcKind::Object),
    ("TaskService/ListTasks", RpcKind::List),
    ("TaskService/CancelTask", RpcKind::Object),
    ("TaskService/SetTaskMetadata", RpcKind::Object),
    ("TaskService/UpdateTaskUniqueId", RpcKind::Object),
    ("TaskService/DeleteTaskUniqueId", RpcKind::Object),
    ("TaskService/AddTaskTags", RpcKind::Object),
    ("TaskService/SetTaskTags", RpcKind::Object),
    ("TaskService/DeleteTaskTags", RpcKind::Object),
    ("TaskService/AuditTask", RpcKind::Object),
    ("TaskService/ExportTasks", RpcKind::List),
    ("TaskService/WatchTasks", RpcKind::List),
    ("WorkService/ClaimTasks", RpcKind::List),
    ("WorkService/HeartbeatLease", RpcKind::Object),
    ("WorkService/ReleaseLease", RpcKind::Object),
    ("WorkService/CompleteTask", RpcKind::Object),
    ("WorkService/FailTask", RpcKind::Object),
    ("ProjectService/ListProjects", RpcKind::List),
    ("ProjectService/GetProject", RpcKind::Object),
    ("ProjectService/SetProjectParams", RpcKind::Object),
    ("BatchService/ListBatches", RpcKind::List),
    ("BatchService/GetBatch", RpcKind::Object),
    ("BatchService/FinalizeBatch", RpcKind::Object),
    ("BatchService/GetBatchStatus", RpcKind::Object),
    ("BatchService/SetBatchMetadata", RpcKind::Object),
    (
        "BatchService/CreateBatch",
        RpcKind::Create(Code::InvalidArgument),
    ),
    ("ProjectService/CreateProject", RpcKind::Create(Code::Ok)),
    ("TaskService/CreateTask", RpcKind::Create(Code::Ok)),
    ("TaskService/ImportTasks", RpcKind::Create(Code::Ok)),
];

/// `Service/Method` of every RPC of the annotask.v1 package, from the served descriptor.
fn described_rpcs() -> BTreeSet<String> {
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    set.file
        .iter()
        .filter(|file| file.package() == "annotask.v1")
        .flat_map(|file| &file.service)
        .flat_map(|service| {
            service
                .method
                .iter()
                .map(move |method| format!("{}/{}", service.name(), method.name()))
        })
        .collect()
}

#[test]
fn the_rpc_table_lists_every_described_rpc() {
    let described = described_rpcs();
    let listed: BTreeSet<String> = RPCS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(listed.len(), RPCS.len(), "an RPC is listed twice");
    assert_eq!(
        (
            described.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&described).collect::<Vec<_>>()
        ),
        (vec![], vec![]),
        "(described but not in RPCS, listed but not described): add new RPCs to the table"
    );
}

fn with_auth<T>(authorization: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(authorization) = authorization {
        request.metadata_mut().insert(
            "authorization",
            authorization.parse().expect("metadata value"),
        );
    }
    request
}

struct Clients {
    tasks: TaskServiceClient<Channel>,
    work: WorkServiceClient<Channel>,
    projects: ProjectServiceClient<Channel>,
    batches: BatchServiceClient<Channel>,
}

/// Calls one RPC against `target`; the answer as text (every message, streamed ones too).
async fn call_rpc(
    clients: &mut Clients,
    rpc: &str,
    authorization: Option<&str>,
    target: &Target,
) -> Result<String, Status> {
    let task_id = target.task_id.clone();
    let lease_task_id = target.lease_task_id.clone();
    let lease_token = target.lease_token.clone();
    let (project, batch) = (target.project.clone(), target.batch.clone());
    let image_task = || proto::CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        params: Some(to_struct(image_params())),
        ..Default::default()
    };
    let answer = match rpc {
        "TaskService/GetTask" => {
            let request = with_auth(authorization, proto::GetTaskRequest { task_id });
            format!("{:?}", clients.tasks.get_task(request).await?)
        }
        "TaskService/ListTasks" => {
            let request = with_auth(
                authorization,
                proto::ListTasksRequest {
                    limit: 100,
                    ..Default::default()
                },
            );
            format!("{:?}", clients.tasks.list_tasks(request).await?)
        }
        "TaskService/CancelTask" => {
            let request = with_auth(
                authorization,
                proto::CancelTaskRequest {
                    task_id,
                    clear_unique_id: false,
                },
            );
            format!("{:?}", clients.tasks.cancel_task(request).await?)
        }
        "TaskService/SetTaskMetadata" => {
            let request = with_auth(
                authorization,
                proto::SetTaskMetadataRequest {
                    task_id,
                    metadata: Some(to_struct(json!({"changed": true}))),
                },
            );
            format!("{:?}", clients.tasks.set_task_metadata(request).await?)
        }
        "TaskService/UpdateTaskUniqueId" => {
            let request = with_auth(
                authorization,
                proto::UpdateTaskUniqueIdRequest {
                    task_id,
                    unique_id: "authz-renamed".to_owned(),
                },
            );
            format!("{:?}", clients.tasks.update_task_unique_id(request).await?)
        }
        "TaskService/DeleteTaskUniqueId" => {
            let request = with_auth(authorization, proto::DeleteTaskUniqueIdRequest { task_id });
            format!("{:?}", clients.tasks.delete_task_unique_id(request).await?)
        }
        "TaskService/AddTaskTags" => {
            let request = with_auth(
                authorization,
                proto::AddTaskTagsRequest {
                    task_id,
                    tags: vec!["authz".to_owned()],
                },
            );
            format!("{:?}", clients.tasks.add_task_tags(request).await?)
        }
        "TaskService/SetTaskTags" => {
            let request = with_auth(
                authorization,
                proto::SetTaskTagsRequest {
                    task_id,
                    tags: vec!["authz".to_owned()],
                },
            );
            format!("{:?}", clients.tasks.set_task_tags(request).await?)
        }
        "TaskService/DeleteTaskTags" => {
            let request = with_auth(
                authorization,
                proto::DeleteTaskTagsRequest {
                    task_id,
                    tags: vec!["authz".to_owned()],
                },
            );
            format!("{:?}", clients.tasks.delete_task_tags(request).await?)
        }
        "TaskService/AuditTask" => {
            let request = with_auth(
                authorization,
                proto::AuditTaskRequest {
                    task_id,
                    accepted: true,
                    ..Default::default()
                },
            );
            format!("{:?}", clients.tasks.audit_task(request).await?)
        }
        "TaskService/ExportTasks" => {
            let request = with_auth(authorization, proto::ExportTasksRequest::default());
            let mut stream = clients.tasks.export_tasks(request).await?.into_inner();
            let mut tasks = Vec::new();
            while let Some(task) = stream.message().await? {
                tasks.push(task);
            }
            format!("{tasks:?}")
        }
        // A watch never ends by itself: opening it is the answer (what a watcher sees of
        // other accounts and worlds is tested in watch.rs).
        "TaskService/WatchTasks" => {
            let request = with_auth(authorization, proto::WatchTasksRequest::default());
            let stream = clients.tasks.watch_tasks(request).await?;
            format!("{:?}", stream.metadata())
        }
        "TaskService/CreateTask" => {
            let mut message = image_task();
            message.unique_id = Some(target.unique_id.clone());
            format!(
                "{:?}",
                clients
                    .tasks
                    .create_task(with_auth(authorization, message))
                    .await?
            )
        }
        "TaskService/ImportTasks" => {
            let mut plain = image_task();
            plain.unique_id = Some(format!("{}-import", target.unique_id));
            let mut in_project = image_task();
            in_project.project = Some(project);
            let items =
                [plain, in_project].map(|task| proto::ImportTasksRequest { task: Some(task) });
            let request = with_auth(authorization, futures::stream::iter(items));
            let mut stream = clients.tasks.import_tasks(request).await?.into_inner();
            let mut answers = Vec::new();
            while let Some(answer) = stream.message().await? {
                answers.push(answer);
            }
            format!("{answers:?}")
        }
        "WorkService/ClaimTasks" => {
            let request = with_auth(authorization, proto::ClaimTasksRequest::default());
            format!("{:?}", clients.work.claim_tasks(request).await?)
        }
        "WorkService/HeartbeatLease" => {
            let request = with_auth(
                authorization,
                proto::HeartbeatLeaseRequest {
                    task_id: lease_task_id,
                    lease_token,
                    lease_seconds: 0,
                },
            );
            format!("{:?}", clients.work.heartbeat_lease(request).await?)
        }
        "WorkService/ReleaseLease" => {
            let request = with_auth(
                authorization,
                proto::ReleaseLeaseRequest {
                    task_id: lease_task_id,
                    lease_token,
                },
            );
            format!("{:?}", clients.work.release_lease(request).await?)
        }
        "WorkService/CompleteTask" => {
            let request = with_auth(
                authorization,
                proto::CompleteTaskRequest {
                    task_id: lease_task_id,
                    lease_token,
                    response: Some(to_struct(json!({"annotations": []}))),
                },
            );
            format!("{:?}", clients.work.complete_task(request).await?)
        }
        "WorkService/FailTask" => {
            let request = with_auth(
                authorization,
                proto::FailTaskRequest {
                    task_id: lease_task_id,
                    lease_token,
                    error: "authz".to_owned(),
                },
            );
            format!("{:?}", clients.work.fail_task(request).await?)
        }
        "ProjectService/ListProjects" => {
            let request = with_auth(authorization, proto::ListProjectsRequest {});
            format!("{:?}", clients.projects.list_projects(request).await?)
        }
        "ProjectService/GetProject" => {
            let request = with_auth(authorization, proto::GetProjectRequest { name: project });
            format!("{:?}", clients.projects.get_project(request).await?)
        }
        "ProjectService/SetProjectParams" => {
            let request = with_auth(
                authorization,
                proto::SetProjectParamsRequest {
                    name: project,
                    params: Some(to_struct(json!({"instruction": "authz"}))),
                    patch: false,
                },
            );
            format!("{:?}", clients.projects.set_project_params(request).await?)
        }
        "ProjectService/CreateProject" => {
            let request = with_auth(
                authorization,
                proto::CreateProjectRequest {
                    name: project,
                    r#type: "imageannotation".to_owned(),
                    params: None,
                },
            );
            format!("{:?}", clients.projects.create_project(request).await?)
        }
        "BatchService/ListBatches" => {
            let request = with_auth(authorization, proto::ListBatchesRequest::default());
            format!("{:?}", clients.batches.list_batches(request).await?)
        }
        "BatchService/GetBatch" => {
            let request = with_auth(authorization, proto::GetBatchRequest { name: batch });
            format!("{:?}", clients.batches.get_batch(request).await?)
        }
        "BatchService/FinalizeBatch" => {
            let request = with_auth(authorization, proto::FinalizeBatchRequest { name: batch });
            format!("{:?}", clients.batches.finalize_batch(request).await?)
        }
        "BatchService/GetBatchStatus" => {
            let request = with_auth(authorization, proto::GetBatchStatusRequest { name: batch });
            format!("{:?}", clients.batches.get_batch_status(request).await?)
        }
        "BatchService/SetBatchMetadata" => {
            let request = with_auth(
                authorization,
                proto::SetBatchMetadataRequest {
                    name: batch,
                    metadata: Some(to_struct(json!({"changed": true}))),
                },
            );
            format!("{:?}", clients.batches.set_batch_metadata(request).await?)
        }
        "BatchService/CreateBatch" => {
            let request = with_auth(
                authorization,
                proto::CreateBatchRequest {
                    name: batch,
                    project,
                    ..Default::default()
                },
            );
            format!("{:?}", clients.batches.create_batch(request).await?)
        }
        other => panic!("no call written for RPC {other}"),
    };
    Ok(answer)
}

async fn grpc_matrix(app: TestApp) {
    let world = seed(&app).await;
    let identities = identities(&app, &world.owner_test_key).await;
    let channel = Channel::from_shared(app.base_url.clone())
        .expect("url")
        .connect()
        .await
        .expect("grpc connect");
    let mut clients = Clients {
        tasks: TaskServiceClient::new(channel.clone()),
        work: WorkServiceClient::new(channel.clone()),
        projects: ProjectServiceClient::new(channel.clone()),
        batches: BatchServiceClient::new(channel),
    };
    let mut cells = 0;
    for identity in &identities {
        let target = world.target(identity);
        let secrets = world.secrets(identity);
        for &(rpc, kind) in RPCS {
            let answer =
                call_rpc(&mut clients, rpc, identity.authorization.as_deref(), target).await;
            let what = format!("{} on {rpc}", identity.name);
            let expected = match (identity.expect, kind) {
                (Expect::Unauthenticated, _) => Code::Unauthenticated,
                (Expect::OutsideWorld, RpcKind::Object) => Code::NotFound,
                (Expect::OutsideWorld, RpcKind::List) => Code::Ok,
                (Expect::OutsideWorld, RpcKind::Create(code)) => code,
            };
            let (code, text) = match answer {
                Ok(text) => (Code::Ok, text),
                Err(status) => (status.code(), format!("{status:?}")),
            };
            assert_eq!(code, expected, "{what}: {text}");
            secrets.assert_absent(&what, &text);
            cells += 1;
        }
    }
    for (key, target) in [
        (app.api_key.clone(), &world.live),
        (world.owner_test_key.clone(), &world.test),
    ] {
        let authorization = format!("Bearer {key}");
        for &(rpc, kind) in RPCS {
            if !matches!(kind, RpcKind::Object) {
                continue;
            }
            let answer = call_rpc(&mut clients, rpc, Some(&authorization), target).await;
            if let Err(status) = answer {
                assert!(
                    !matches!(status.code(), Code::NotFound | Code::Unauthenticated),
                    "the owner on {rpc}: {status:?}"
                );
            }
        }
    }
    println!(
        "gRPC authorization matrix: {} RPCs x {} identities = {cells} calls",
        RPCS.len(),
        identities.len()
    );
    assert_eq!(cells, RPCS.len() * identities.len());
}

backend_tests!(rest_matrix, grpc_matrix);

// ---------------------------------------------------------------------------------------------
// Failed authentications per client address
// ---------------------------------------------------------------------------------------------

/// Over real sockets (the server sees the peer 127.0.0.1): a burst of 2 failures, then the
/// address is refused, valid key or not, on REST and gRPC alike. At 2 a minute the next
/// failure comes back after 30 s, far beyond this test's run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_from_one_address_are_limited() {
    let Some(app) = TestApp::spawn_with(crate::helpers::Backend::Sqlite, |config| {
        config.auth_failures_per_minute = 2;
    })
    .await
    else {
        return;
    };
    let get_tasks = |authorization: Option<String>| {
        let mut request = app.http.get(app.url("/v1/tasks"));
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        request.send()
    };
    let unknown = || Some("Bearer live_00000000000000000000000000000000deadbeef".to_owned());
    let good = || Some(format!("Bearer {}", app.api_key));

    // No credentials at all guess nothing: never counted.
    for _ in 0..5 {
        let response = get_tasks(None).await.expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let first = get_tasks(unknown()).await.expect("sent");
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    // Within the budget a valid key works, and spends nothing of it.
    for _ in 0..3 {
        let good_within = get_tasks(good()).await.expect("sent");
        assert_eq!(good_within.status(), StatusCode::OK);
    }
    let second = get_tasks(unknown()).await.expect("sent");
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED, "the burst is 2");

    let refused = get_tasks(unknown()).await.expect("sent");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (1..=30).contains(&retry_after),
        "one failure back in at most 30 s: {retry_after}"
    );
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["status_code"], 429, "{body}");

    // Refused before the key is looked at: a valid key from the address waits too.
    let good_after = get_tasks(good()).await.expect("sent");
    assert_eq!(good_after.status(), StatusCode::TOO_MANY_REQUESTS);

    let mut tasks = TaskServiceClient::connect(app.base_url.clone())
        .await
        .expect("grpc connect");
    for authorization in [unknown(), good()] {
        let request = with_auth(authorization.as_deref(), proto::ListTasksRequest::default());
        let status = tasks.list_tasks(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
}
