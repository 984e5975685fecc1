//! Projects and batches (SPEC §10) over REST and gRPC, on both backends: versioned params
//! that tasks inherit, the batch lifecycle and its callback, offset paging, and names that
//! need percent-decoding.

use std::time::Duration;

use annotask::proto::{
    batch_service_client::BatchServiceClient, project_service_client::ProjectServiceClient,
    BatchStatus as ProtoBatchStatus, CreateBatchRequest, CreateProjectRequest,
    FinalizeBatchRequest, GetBatchRequest, GetBatchStatusRequest, GetProjectRequest,
    ListBatchesRequest, ListProjectsRequest, SetBatchMetadataRequest, SetProjectParamsRequest,
};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tonic::Code;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp},
};

fn image_fields() -> Value {
    json!({"attachment": "https://e.com/car.png", "geometries": {"box": {"objects_to_annotate": ["car"]}}})
}

async fn create_task(app: &TestApp, extra: Value) -> (StatusCode, Value) {
    let mut body = image_fields();
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    app.post("/v1/task/imageannotation", &body).await
}

fn path(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn projects_are_created_listed_versioned_and_refused_twice(app: TestApp) {
    let name = "cars / 2026 q4";
    let (status, project) = app
        .post(
            "/v1/projects",
            &json!({"type": "imageannotation", "name": name, "params": {"instruction": "Box cars", "x": 1},
                    "rapid": false, "studio": false, "datasetId": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{project}");
    assert_eq!(project["name"], name);
    assert_eq!(project["type"], "imageannotation");
    assert_eq!(project["param_history"][0]["version"], 0);
    assert_eq!(project["param_history"][0]["instruction"], "Box cars");
    assert_eq!(project["param_history"][0]["x"], 1);

    let (status, fetched) = app.get(&format!("/v1/projects/{}", path(name))).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched, project, "the name is percent-decoded once");

    let (status, body) = app
        .post(
            "/v1/projects",
            &json!({"type": "imageannotation", "name": name}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .post("/v1/projects", &json!({"type": "nope", "name": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post("/v1/projects", &json!({"type": "imageannotation"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get("/v1/projects/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["status_code"], 404);

    app.create_project("second", "categorization").await;
    let (status, list) = app.get("/v1/projects").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .expect("a bare array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, [name, "second"]);

    let set_params_path = format!("/v1/projects/{}/setParams", path(name));
    let (status, v1) = app
        .post(
            &set_params_path,
            &json!({"instruction": "Box every car", "patch": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(
        v1["param_history"][1],
        json!({"version": 1, "created_at": v1["param_history"][1]["created_at"], "instruction": "Box every car", "x": 1})
    );
    let (_, v2) = app.post(&set_params_path, &json!({"y": 2})).await;
    assert_eq!(v2["param_history"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        v2["param_history"][2],
        json!({"version": 2, "created_at": v2["param_history"][2]["created_at"], "y": 2})
    );
    let (status, body) = app
        .post("/v1/projects/nobody/setParams", &json!({"y": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Another account sees none of it.
    let stranger = app.new_account_key(false).await;
    let (status, _) = app
        .send(app.request_as(
            &stranger,
            Method::GET,
            &format!("/v1/projects/{}", path(name)),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = app
        .send(app.request_as(&stranger, Method::GET, "/v1/projects"))
        .await;
    assert_eq!(theirs, json!([]));
}

async fn tasks_inherit_their_projects_latest_params_and_record_the_version(app: TestApp) {
    app.post(
        "/v1/projects",
        &json!({"type": "imageannotation", "name": "p", "params": {"instruction": "v0"}}),
    )
    .await;
    app.post("/v1/projects/p/setParams", &json!({"instruction": "Box cars", "geometries": {"box": {"objects_to_annotate": ["car"]}}, "padding": 4})).await;
    let (status, task) = app
        .post(
            "/v1/task/imageannotation",
            &json!({"attachment": "https://e.com/a.png", "project": "p", "padding": 9}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["instruction"], "Box cars");
    assert_eq!(
        task["params"]["geometries"],
        json!({"box": {"objects_to_annotate": ["car"]}})
    );
    assert_eq!(task["params"]["padding"], 9, "the task's own value wins");
    assert_eq!(task["project_param_version"], 1);

    let (status, body) = app
        .post(
            "/v1/task/categorization",
            &json!({"instruction": "?", "attachment": "x", "categories": ["a"], "project": "p"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("'p'"), "{body}");
    let (status, body) = create_task(&app, json!({"project": "missing project"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing project"),
        "{body}"
    );
    let (status, body) = create_task(&app, json!({"batch": "missing batch"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing batch"),
        "{body}"
    );
}

async fn a_batch_moves_from_staging_to_in_progress_to_completed(app: TestApp) {
    app.create_project("p", "imageannotation").await;
    let batch = app
        .create_batch("b 1/x", "p", json!({"staging": true, "metadata": {"k": 1}}))
        .await;
    assert_eq!(batch["status"], "staging");
    assert_eq!(batch["callback"], "");
    assert_eq!(batch["metadata"], json!({"k": 1}));
    let (status, body) = app
        .post("/v1/batches", &json!({"name": "b 1/x", "project": "p"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .post("/v1/batches", &json!({"name": "b2", "project": "nobody"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A task with the batch and no project takes the batch's project.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, task) = create_task(&app, json!({"batch": "b 1/x"})).await;
        assert_eq!(status, StatusCode::OK, "{task}");
        assert_eq!(task["project"], "p");
        ids.push(task["task_id"].as_str().unwrap().to_owned());
    }
    app.create_project("q", "imageannotation").await;
    let (status, body) = create_task(&app, json!({"batch": "b 1/x", "project": "q"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (_, claimed) = app.post("/v1/work/claim", &json!({"limit": 10})).await;
    assert_eq!(claimed["leases"], json!([]), "a staging batch's tasks wait");

    let batch_path = format!("/v1/batches/{}", path("b 1/x"));
    let (status, finalized) = app
        .post(&format!("{batch_path}/finalize"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{finalized}");
    assert_eq!(finalized["status"], "in_progress");
    let (_, again) = app
        .post(&format!("{batch_path}/finalize"), &json!({}))
        .await;
    assert_eq!(
        again["status"], "in_progress",
        "finalizing twice changes nothing"
    );

    let (_, status_counts) = app.get(&format!("{batch_path}/status")).await;
    assert_eq!(
        status_counts,
        json!({"status": "in_progress", "pending": 3, "completed": 0, "error": 0, "canceled": 0})
    );

    let (_, claimed) = app.post("/v1/work/claim", &json!({"limit": 10})).await;
    let leases = claimed["leases"].as_array().cloned().unwrap_or_default();
    assert_eq!(leases.len(), 3, "finalized: handed out");
    for (lease, action, body) in [
        (
            &leases[0],
            "complete",
            json!({"lease_token": leases[0]["lease_token"], "response": {"ok": true}}),
        ),
        (
            &leases[1],
            "fail",
            json!({"lease_token": leases[1]["lease_token"], "error": "bad"}),
        ),
    ] {
        let path = format!(
            "/v1/task/{}/{action}",
            lease["task"]["task_id"].as_str().unwrap()
        );
        let (status, answer) = app.post(&path, &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, midway) = app.get(&batch_path).await;
    assert_eq!(midway["status"], "in_progress");
    let (status, _) = app
        .post(
            &format!(
                "/v1/task/{}/cancel",
                leases[2]["task"]["task_id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (_, done) = app.get(&batch_path).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["completed_at"].is_string());
    let (_, counts) = app.get(&format!("{batch_path}/status")).await;
    assert_eq!(
        counts,
        json!({"status": "completed", "pending": 0, "completed": 1, "error": 1, "canceled": 1})
    );
    let (status, body) = create_task(&app, json!({"batch": "b 1/x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("completed"),
        "{body}"
    );

    let (status, tagged) = app
        .post(
            &format!("{batch_path}/setMetadata"),
            &json!({"reviewed": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tagged}");
    assert_eq!(tagged["metadata"], json!({"reviewed": true}));
    let (status, body) = app
        .post(&format!("{batch_path}/setMetadata"), &json!([1]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app.get("/v1/batches/nobody/status").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn batches_list_with_filters_and_offset_paging(app: TestApp) {
    app.create_project("p", "imageannotation").await;
    app.create_project("q", "imageannotation").await;
    for n in 0..5 {
        app.create_batch(&format!("p-{n}"), "p", json!({})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    app.create_batch("q-0", "q", json!({"staging": true})).await;

    let (status, page) = app.get("/v1/batches?project=p&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let keys: Vec<&str> = {
        let mut keys: Vec<&str> = page
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    };
    assert_eq!(
        keys,
        ["docs", "has_more", "limit", "offset", "total", "totalDocs"]
    );
    assert_eq!(
        (
            page["total"].clone(),
            page["totalDocs"].clone(),
            page["limit"].clone(),
            page["offset"].clone(),
            page["has_more"].clone()
        ),
        (json!(5), json!(5), json!(2), json!(0), json!(true))
    );
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let (_, page) = app
            .get(&format!("/v1/batches?project=p&limit=2&offset={offset}"))
            .await;
        names.extend(
            page["docs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].as_str().unwrap().to_owned()),
        );
        if page["has_more"] != true {
            break;
        }
        offset += 2;
    }
    assert_eq!(
        names,
        ["p-4", "p-3", "p-2", "p-1", "p-0"],
        "newest first, each once"
    );
    let (_, staging) = app.get("/v1/batches?status=staging").await;
    assert_eq!(
        staging["docs"]
            .as_array()
            .map(|d| d.iter().map(|b| b["name"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("q-0")])
    );
    for bad in [
        "status=nope",
        "limit=0",
        "limit=101",
        "offset=-1",
        "offset=x",
        "start_time=yesterday",
    ] {
        let (status, body) = app.get(&format!("/v1/batches?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

async fn offset_pages_the_task_list_and_refuses_next_token_beside_it(app: TestApp) {
    for _ in 0..7 {
        create_task(&app, json!({})).await;
    }
    let (_, all) = app.get("/v1/tasks").await;
    let all_ids: Vec<Value> = all["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].clone())
        .collect();
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let (status, page) = app.get(&format!("/v1/tasks?limit=3&offset={offset}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["offset"], offset);
        assert_eq!(page["total"], 7);
        paged.extend(
            page["docs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].clone()),
        );
        if page["has_more"] != true {
            break;
        }
        offset += 3;
        assert!(offset < 20, "offset paging never ends");
    }
    assert_eq!(paged, all_ids);
    let (_, first) = app.get("/v1/tasks?limit=3").await;
    let token = first["next_token"].as_str().unwrap();
    let (status, body) = app
        .get(&format!("/v1/tasks?limit=3&offset=3&next_token={token}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for bad in ["offset=-1", "offset=abc"] {
        let (status, body) = app.get(&format!("/v1/tasks?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("offset"), "{body}");
    }
}

async fn project_and_batch_services_over_grpc(app: TestApp) {
    let mut projects = ProjectServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    let mut batches = BatchServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    let params =
        annotask::proto::struct_from_json(json!({"instruction": "Box"}).as_object().unwrap());
    let project = projects
        .create_project(app.grpc_request(CreateProjectRequest {
            name: "g".into(),
            r#type: "imageannotation".into(),
            params: Some(params.clone()),
        }))
        .await
        .expect("CreateProject")
        .into_inner();
    assert_eq!(project.param_history.len(), 1);
    let duplicate = projects
        .create_project(app.grpc_request(CreateProjectRequest {
            name: "g".into(),
            r#type: "imageannotation".into(),
            params: None,
        }))
        .await
        .expect_err("duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let updated = projects
        .set_project_params(app.grpc_request(SetProjectParamsRequest {
            name: "g".into(),
            params: Some(params),
            patch: true,
        }))
        .await
        .expect("SetProjectParams")
        .into_inner();
    assert_eq!(updated.param_history.last().map(|v| v.version), Some(1));
    let listed = projects
        .list_projects(app.grpc_request(ListProjectsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.projects.len(), 1);
    let fetched = projects
        .get_project(app.grpc_request(GetProjectRequest { name: "g".into() }))
        .await
        .expect("GetProject")
        .into_inner();
    assert_eq!(fetched, updated);
    let missing = projects
        .get_project(app.grpc_request(GetProjectRequest {
            name: "nope".into(),
        }))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);

    let batch = batches
        .create_batch(app.grpc_request(CreateBatchRequest {
            name: "gb".into(),
            project: "g".into(),
            staging: true,
            ..Default::default()
        }))
        .await
        .expect("CreateBatch")
        .into_inner();
    assert_eq!(batch.status, i32::from(ProtoBatchStatus::Staging));
    let bad = batches
        .create_batch(app.grpc_request(CreateBatchRequest {
            name: "gb2".into(),
            project: "nope".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown project");
    assert_eq!(bad.code(), Code::InvalidArgument);
    create_task(&app, json!({"batch": "gb"})).await;
    let finalized = batches
        .finalize_batch(app.grpc_request(FinalizeBatchRequest { name: "gb".into() }))
        .await
        .expect("finalize")
        .into_inner();
    assert_eq!(finalized.status, i32::from(ProtoBatchStatus::InProgress));
    let counts = batches
        .get_batch_status(app.grpc_request(GetBatchStatusRequest { name: "gb".into() }))
        .await
        .expect("status")
        .into_inner();
    assert_eq!((counts.pending, counts.completed), (1, 0));
    let page = batches
        .list_batches(app.grpc_request(ListBatchesRequest {
            project: "g".into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!((page.total, page.docs.len(), page.has_more), (1, 1, false));
    let metadata =
        annotask::proto::struct_from_json(json!({"reviewed": true}).as_object().unwrap());
    let tagged = batches
        .set_batch_metadata(app.grpc_request(SetBatchMetadataRequest {
            name: "gb".into(),
            metadata: Some(metadata.clone()),
        }))
        .await
        .expect("SetBatchMetadata")
        .into_inner();
    assert_eq!(tagged.metadata, Some(metadata));
    let fetched = batches
        .get_batch(app.grpc_request(GetBatchRequest { name: "gb".into() }))
        .await
        .expect("GetBatch")
        .into_inner();
    assert_eq!(fetched, tagged);
    let missing = batches
        .get_batch(app.grpc_request(GetBatchRequest {
            name: "nope".into(),
        }))
        .await
        .expect_err("missing batch");
    assert_eq!(missing.code(), Code::NotFound);
    let worker = app.worker_key().await;
    let denied = batches
        .create_batch(crate::helpers::grpc_request_as(
            &worker,
            CreateBatchRequest {
                name: "w".into(),
                project: "g".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("worker");
    assert_eq!(denied.code(), Code::PermissionDenied);
}

backend_tests!(
    projects_are_created_listed_versioned_and_refused_twice,
    tasks_inherit_their_projects_latest_params_and_record_the_version,
    a_batch_moves_from_staging_to_in_progress_to_completed,
    batches_list_with_filters_and_offset_paging,
    offset_pages_the_task_list_and_refuses_next_token_beside_it,
    project_and_batch_services_over_grpc,
);

/// The last tasks of a batch finishing at once complete it exactly once, with one callback.
async fn a_batch_completes_once_with_one_callback_when_its_tasks_finish_together(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |config| {
        config.callbacks.allow_private = true;
        config.callbacks.schedule = vec![Duration::ZERO];
        config.callbacks.poll_interval = Duration::from_millis(50);
    })
    .await
    else {
        return;
    };
    let receiver =
        crate::callbacks::Receiver::start(|_, _| crate::callbacks::Answer::Status(200)).await;
    app.create_project("p", "imageannotation").await;
    app.create_batch(
        "together",
        "p",
        json!({"callback": format!("{}/batch-done", receiver.url)}),
    )
    .await;
    join_all((0..20).map(|_| create_task(&app, json!({"batch": "together"})))).await;
    let (_, claimed) = app.post("/v1/work/claim", &json!({"limit": 20})).await;
    let leases = claimed["leases"].as_array().cloned().unwrap_or_default();
    assert_eq!(leases.len(), 20);
    let app = &app;
    join_all(leases.iter().map(|lease| async move {
        let path = format!(
            "/v1/task/{}/complete",
            lease["task"]["task_id"].as_str().unwrap()
        );
        let body = json!({"lease_token": lease["lease_token"], "response": {"ok": true}});
        let (status, answer) = app.post(&path, &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }))
    .await;
    let (_, batch) = app.get("/v1/batches/together").await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let delivered = receiver
        .wait_for("batch-done", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.requests("batch-done").len(),
        1,
        "one batch callback"
    );
    let body = delivered[0].json();
    assert_eq!(body["batch_name"], "together");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["batch"]["status"], "completed");
    let secrets = app
        .service
        .show_callback_secrets(&app.account, false)
        .await
        .expect("secrets");
    assert!(crate::callbacks::verify_signature(
        &secrets.signing_secret,
        &delivered[0]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_batch_completes_once_with_one_callback() {
    a_batch_completes_once_with_one_callback_when_its_tasks_finish_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_completes_once_with_one_callback() {
    a_batch_completes_once_with_one_callback_when_its_tasks_finish_together(Backend::Postgres)
        .await;
}
