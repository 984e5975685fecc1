//! `annotask.v1.TaskService` over real gRPC (tonic client, HTTP/2): every RPC's success
//! path, the error mapping of SPEC §8, REST/gRPC agreement, health and reflection.

use std::collections::BTreeSet;

use annotask::proto::{
    self, task_service_client::TaskServiceClient, AddTaskTagsRequest, AuditTaskRequest,
    CancelTaskRequest, CreateTaskRequest, DeleteTaskTagsRequest, DeleteTaskUniqueIdRequest,
    GetTaskRequest, ListTasksRequest, SetTaskMetadataRequest, SetTaskTagsRequest, TaskStatus,
    UpdateTaskUniqueIdRequest,
};
use base64::Engine as _;
use prost_types::{value::Kind, ListValue, Struct};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Number, Value};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

use crate::{
    backend_tests,
    helpers::{grpc_request_as, TestApp},
};

// ---------------------------------------------------------------------------------------------
// Helpers shared with grpc_web.rs
// ---------------------------------------------------------------------------------------------

/// A JSON object as a `google.protobuf.Struct` (test-side, independent of the server's code).
pub fn to_struct(value: Value) -> Struct {
    let Value::Object(map) = value else {
        panic!("a Struct is built from a JSON object, not {value}");
    };
    Struct {
        fields: map
            .into_iter()
            .map(|(key, value)| (key, to_proto_value(value)))
            .collect(),
    }
}

fn to_proto_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().expect("finite number")),
        Value::String(text) => Kind::StringValue(text),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_proto_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `google.protobuf.Struct` as JSON; whole numbers become JSON integers, as in REST.
pub fn from_struct(value: &Struct) -> Value {
    Value::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), from_proto_value(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn from_proto_value(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(*flag),
        Some(Kind::NumberValue(number)) => {
            if number.fract() == 0.0 && number.abs() < 9_007_199_254_740_992.0 {
                Value::Number(Number::from(*number as i64))
            } else {
                Number::from_f64(*number).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(text)) => Value::String(text.clone()),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(from_proto_value).collect())
        }
        Some(Kind::StructValue(map)) => from_struct(map),
    }
}

/// A protobuf time as REST writes it: ISO-8601 UTC, exactly 3 fractional digits and `Z`.
pub fn iso(at: &prost_types::Timestamp) -> String {
    let nanos = u32::try_from(at.nanos).expect("non-negative nanos");
    chrono::DateTime::from_timestamp(at.seconds, nanos)
        .expect("representable time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The params of the image annotation task the REST helper `create_image_task` makes.
pub fn image_params() -> Value {
    json!({
        "attachment": "https://example.com/car.png",
        "attachment_type": "image",
        "geometries": {"box": {"objects_to_annotate": ["car"], "min_height": 10}},
    })
}

/// A valid `CreateTask` request for an image annotation task.
pub fn image_task_request() -> CreateTaskRequest {
    CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        params: Some(to_struct(image_params())),
        instruction: Some("Draw a box around each car".to_owned()),
        ..Default::default()
    }
}

/// A protobuf time in milliseconds since the epoch, for ordering.
pub fn millis(at: &Option<prost_types::Timestamp>) -> i64 {
    let at = at.as_ref().expect("a time");
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

fn status_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status).expect("known status") {
        TaskStatus::Unspecified => "unspecified",
        TaskStatus::Pending => "pending",
        TaskStatus::Completed => "completed",
        TaskStatus::Canceled => "canceled",
        TaskStatus::Error => "error",
    }
}

/// Asserts that a gRPC `Task` and a REST task document describe the same task, field by field.
pub fn assert_same_task(grpc: &proto::Task, rest: &Value) {
    let context = format!("gRPC {grpc:?}\nREST {rest}");
    assert_eq!(rest["task_id"], json!(grpc.task_id), "task_id; {context}");
    let created_at = grpc.created_at.as_ref().expect("created_at");
    let updated_at = grpc.updated_at.as_ref().expect("updated_at");
    assert_eq!(
        created_at.nanos % 1_000_000,
        0,
        "created_at is stored at millisecond precision; {context}"
    );
    assert_eq!(
        rest["created_at"],
        json!(iso(created_at)),
        "created_at; {context}"
    );
    assert_eq!(
        rest["updated_at"],
        json!(iso(updated_at)),
        "updated_at; {context}"
    );
    assert_eq!(
        rest.get("completed_at").cloned(),
        grpc.completed_at.as_ref().map(|at| json!(iso(at))),
        "completed_at; {context}"
    );
    assert_eq!(rest["type"], json!(grpc.r#type), "type; {context}");
    assert_eq!(
        rest["status"],
        json!(status_name(grpc.status)),
        "status; {context}"
    );
    assert_eq!(
        rest.get("instruction").cloned(),
        grpc.instruction.clone().map(Value::String),
        "instruction; {context}"
    );
    assert_eq!(
        rest["params"],
        from_struct(grpc.params.as_ref().expect("params")),
        "params; {context}"
    );
    assert_eq!(
        rest["callback_url"].as_str().unwrap_or(""),
        grpc.callback_url.as_deref().unwrap_or(""),
        "callback_url; {context}"
    );
    assert_eq!(
        rest["metadata"],
        from_struct(grpc.metadata.as_ref().expect("metadata")),
        "metadata; {context}"
    );
    assert_eq!(
        rest.get("unique_id").cloned(),
        grpc.unique_id.clone().map(Value::String),
        "unique_id; {context}"
    );
    assert_eq!(
        rest.get("tags").cloned().unwrap_or(json!([])),
        json!(grpc.tags),
        "tags; {context}"
    );
    assert_eq!(
        rest.get("project").cloned(),
        grpc.project.clone().map(Value::String),
        "project; {context}"
    );
    assert_eq!(
        rest.get("batch").cloned(),
        grpc.batch.clone().map(Value::String),
        "batch; {context}"
    );
    assert_eq!(
        rest.get("response").cloned(),
        grpc.response.as_ref().map(from_struct),
        "response; {context}"
    );
    assert_eq!(
        rest["audits"].as_array().map(Vec::len),
        Some(grpc.audits.len()),
        "audits; {context}"
    );
    assert_eq!(rest["is_test"], json!(grpc.is_test), "is_test; {context}");
}

async fn create(
    app: &TestApp,
    client: &mut TaskServiceClient<Channel>,
    request: CreateTaskRequest,
) -> proto::Task {
    client
        .create_task(app.grpc_request(request))
        .await
        .expect("CreateTask succeeds")
        .into_inner()
}

async fn get(app: &TestApp, client: &mut TaskServiceClient<Channel>, task_id: &str) -> proto::Task {
    client
        .get_task(app.grpc_request(GetTaskRequest {
            task_id: task_id.to_owned(),
        }))
        .await
        .expect("GetTask succeeds")
        .into_inner()
}

fn assert_code(
    result: Result<tonic::Response<impl std::fmt::Debug>, Status>,
    code: Code,
) -> Status {
    match result {
        Ok(response) => panic!("expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}

/// The `error` message of a REST error answer, after checking its status.
async fn rest_error(
    app: &TestApp,
    request: reqwest::RequestBuilder,
    expected: StatusCode,
) -> String {
    let (status, body) = app.send(request).await;
    assert_eq!(status, expected, "{body}");
    body["error"].as_str().expect("error message").to_owned()
}

fn error_info_reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("a google.rpc.ErrorInfo detail on {status:?}"))
        .reason
}

// ---------------------------------------------------------------------------------------------
// Success paths
// ---------------------------------------------------------------------------------------------

async fn create_task_returns_a_pending_task_with_every_given_field(app: TestApp) {
    let mut client = app.grpc().await;
    let request = CreateTaskRequest {
        callback_url: Some("https://example.com/callback".to_owned()),
        metadata: Some(to_struct(
            json!({"batch_no": 7, "nested": {"ok": true, "list": [1, "a"]}}),
        )),
        unique_id: Some("grpc-create-1".to_owned()),
        tags: vec!["cars".to_owned(), "day".to_owned()],
        ..image_task_request()
    };
    let task = create(&app, &mut client, request).await;

    assert_eq!(task.task_id.len(), 24, "{task:?}");
    assert!(
        task.task_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{}",
        task.task_id
    );
    let created_at = task.created_at.expect("created_at");
    assert_eq!(
        &task.task_id[..8],
        format!("{:08x}", created_at.seconds),
        "the id starts with the creation second"
    );
    assert_eq!(created_at.nanos % 1_000_000, 0, "millisecond precision");
    assert_eq!(task.updated_at, Some(created_at));
    assert_eq!(task.completed_at, None);
    assert_eq!(task.r#type, "imageannotation");
    assert_eq!(task.status(), TaskStatus::Pending);
    assert_eq!(
        task.instruction.as_deref(),
        Some("Draw a box around each car")
    );
    assert_eq!(
        from_struct(task.params.as_ref().expect("params")),
        image_params()
    );
    assert_eq!(
        task.callback_url.as_deref(),
        Some("https://example.com/callback")
    );
    assert_eq!(
        from_struct(task.metadata.as_ref().expect("metadata")),
        json!({"batch_no": 7, "nested": {"ok": true, "list": [1, "a"]}})
    );
    assert_eq!(task.unique_id.as_deref(), Some("grpc-create-1"));
    assert_eq!(task.tags, ["cars", "day"]);
    assert_eq!(task.project, None);
    assert_eq!(task.batch, None);
    assert_eq!(task.response, None);
    assert!(task.audits.is_empty());
    assert!(!task.is_test);
}

async fn create_task_without_metadata_gives_an_empty_metadata_object_and_no_unique_id(
    app: TestApp,
) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    assert_eq!(
        from_struct(task.metadata.as_ref().expect("metadata")),
        json!({})
    );
    assert_eq!(task.unique_id, None);
    assert!(task.tags.is_empty());
    assert_eq!(task.callback_url, None);
}

async fn get_task_returns_the_task_as_created(app: TestApp) {
    let mut client = app.grpc().await;
    let created = create(
        &app,
        &mut client,
        CreateTaskRequest {
            metadata: Some(to_struct(json!({"k": "v"}))),
            unique_id: Some("grpc-get-1".to_owned()),
            tags: vec!["t1".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let fetched = get(&app, &mut client, &created.task_id).await;
    assert_eq!(fetched, created);
}

async fn list_tasks_pages_with_next_token_and_reports_the_same_total_on_every_page(app: TestApp) {
    let mut client = app.grpc().await;
    let mut created = BTreeSet::new();
    for n in 0..5 {
        let task = create(
            &app,
            &mut client,
            CreateTaskRequest {
                unique_id: Some(format!("grpc-page-{n}")),
                ..image_task_request()
            },
        )
        .await;
        created.insert(task.task_id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = client
            .list_tasks(app.grpc_request(ListTasksRequest {
                limit: 2,
                next_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("ListTasks succeeds")
            .into_inner();
        assert_eq!(page.total, 5, "total counts every match on every page");
        assert_eq!(page.limit, 2);
        assert_eq!(page.offset, 0);
        assert_eq!(page.has_more, page.next_token.is_some(), "{page:?}");
        pages.push(page.docs.len());
        seen.extend(
            page.docs
                .iter()
                .map(|task| (task.created_at.expect("created_at"), task.task_id.clone())),
        );
        match page.next_token {
            Some(next) => {
                assert!(!next.is_empty());
                token = next;
            }
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    let ids: BTreeSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 5, "no duplicates across pages");
    assert_eq!(ids, created, "every task listed exactly once");
    for pair in seen.windows(2) {
        let ((at_a, id_a), (at_b, id_b)) = (&pair[0], &pair[1]);
        let key_a = (at_a.seconds, at_a.nanos, id_a);
        let key_b = (at_b.seconds, at_b.nanos, id_b);
        assert!(
            key_a > key_b,
            "created_at desc, then task_id desc: {seen:?}"
        );
    }
}

async fn list_tasks_with_limit_zero_uses_the_default_of_100_and_has_no_next_token(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("ListTasks succeeds")
        .into_inner();
    assert_eq!(page.limit, 100);
    assert_eq!(page.total, 1);
    assert!(!page.has_more);
    assert_eq!(page.next_token, None);
    assert_eq!(page.docs, [task]);
}

async fn list_tasks_filters_by_unique_id_tags_and_status(app: TestApp) {
    let mut client = app.grpc().await;
    let tagged = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("filter-a".to_owned()),
            tags: vec!["red".to_owned(), "big".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let other = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("filter-b".to_owned()),
            tags: vec!["red".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    client
        .cancel_task(app.grpc_request(CancelTaskRequest {
            task_id: other.task_id.clone(),
            clear_unique_id: false,
        }))
        .await
        .expect("CancelTask succeeds");

    let list = |request: ListTasksRequest| {
        let mut client = client.clone();
        let request = app.grpc_request(request);
        async move {
            let page = client
                .list_tasks(request)
                .await
                .expect("ListTasks")
                .into_inner();
            let ids: Vec<String> = page.docs.into_iter().map(|task| task.task_id).collect();
            (page.total, ids)
        }
    };
    assert_eq!(
        list(ListTasksRequest {
            unique_id: vec!["filter-a".to_owned()],
            ..Default::default()
        })
        .await,
        (1, vec![tagged.task_id.clone()])
    );
    assert_eq!(
        list(ListTasksRequest {
            tags: vec!["red".to_owned(), "big".to_owned()],
            ..Default::default()
        })
        .await,
        (1, vec![tagged.task_id.clone()]),
        "tags: a task must have all of them"
    );
    assert_eq!(
        list(ListTasksRequest {
            status: TaskStatus::Canceled.into(),
            ..Default::default()
        })
        .await,
        (1, vec![other.task_id.clone()])
    );
    assert_eq!(
        list(ListTasksRequest {
            status: TaskStatus::Completed.into(),
            ..Default::default()
        })
        .await,
        (0, vec![])
    );
}

async fn list_tasks_with_limited_response_keeps_only_id_status_and_metadata(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            metadata: Some(to_struct(json!({"k": 1}))),
            unique_id: Some("limited-1".to_owned()),
            tags: vec!["t".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest {
            limited_response: true,
            ..Default::default()
        }))
        .await
        .expect("ListTasks succeeds")
        .into_inner();
    assert_eq!(page.docs.len(), 1);
    let doc = &page.docs[0];
    assert_eq!(doc.task_id, task.task_id);
    assert_eq!(doc.status(), TaskStatus::Pending);
    assert_eq!(doc.metadata, task.metadata);
    assert_eq!(doc.project, None);
    assert_eq!(doc.unique_id, None);
    assert!(doc.tags.is_empty());
    assert_eq!(doc.params, None);
    assert_eq!(doc.instruction, None);
}

async fn cancel_task_cancels_a_pending_task_and_is_idempotent(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("cancel-keep".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let canceled = client
        .cancel_task(app.grpc_request(CancelTaskRequest {
            task_id: task.task_id.clone(),
            clear_unique_id: false,
        }))
        .await
        .expect("CancelTask succeeds")
        .into_inner();
    assert_eq!(canceled.status(), TaskStatus::Canceled);
    assert_eq!(
        canceled.unique_id.as_deref(),
        Some("cancel-keep"),
        "kept without clear_unique_id"
    );
    assert!(millis(&canceled.updated_at) >= millis(&task.updated_at));
    assert_eq!(canceled.created_at, task.created_at);

    let again = client
        .cancel_task(app.grpc_request(CancelTaskRequest {
            task_id: task.task_id.clone(),
            clear_unique_id: false,
        }))
        .await
        .expect("canceling a canceled task succeeds")
        .into_inner();
    assert_eq!(again, canceled, "a second cancel changes nothing");
    assert_eq!(get(&app, &mut client, &task.task_id).await, canceled);

    // The unique_id is still held by the canceled task.
    let status = assert_code(
        client
            .create_task(app.grpc_request(CreateTaskRequest {
                unique_id: Some("cancel-keep".to_owned()),
                ..image_task_request()
            }))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(error_info_reason(&status), "UNIQUE_ID_CONFLICT");
}

async fn cancel_task_with_clear_unique_id_frees_the_unique_id(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("cancel-clear".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let canceled = client
        .cancel_task(app.grpc_request(CancelTaskRequest {
            task_id: task.task_id.clone(),
            clear_unique_id: true,
        }))
        .await
        .expect("CancelTask succeeds")
        .into_inner();
    assert_eq!(canceled.status(), TaskStatus::Canceled);
    assert_eq!(canceled.unique_id, None);
    assert_eq!(get(&app, &mut client, &task.task_id).await.unique_id, None);

    let successor = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("cancel-clear".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    assert_eq!(successor.unique_id.as_deref(), Some("cancel-clear"));
    assert_ne!(successor.task_id, task.task_id);
}

async fn cancel_task_with_clear_unique_id_on_an_already_canceled_task_still_clears_it(
    app: TestApp,
) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("cancel-twice".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    for clear_unique_id in [false, true] {
        client
            .cancel_task(app.grpc_request(CancelTaskRequest {
                task_id: task.task_id.clone(),
                clear_unique_id,
            }))
            .await
            .expect("CancelTask succeeds");
    }
    let fetched = get(&app, &mut client, &task.task_id).await;
    assert_eq!(fetched.status(), TaskStatus::Canceled);
    assert_eq!(fetched.unique_id, None);
}

async fn set_task_metadata_replaces_the_metadata_and_bumps_updated_at(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            metadata: Some(to_struct(json!({"old": 1, "keep": "no"}))),
            ..image_task_request()
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let updated = client
        .set_task_metadata(app.grpc_request(SetTaskMetadataRequest {
            task_id: task.task_id.clone(),
            metadata: Some(to_struct(json!({"new": {"deep": [1.5, null]}}))),
        }))
        .await
        .expect("SetTaskMetadata succeeds")
        .into_inner();
    assert_eq!(
        from_struct(updated.metadata.as_ref().expect("metadata")),
        json!({"new": {"deep": [1.5, null]}}),
        "metadata is replaced, not merged"
    );
    assert!(
        millis(&updated.updated_at) > millis(&task.updated_at),
        "updated_at bumped: {:?} -> {:?}",
        task.updated_at,
        updated.updated_at
    );
    assert_eq!(updated.created_at, task.created_at);
    assert_eq!(get(&app, &mut client, &task.task_id).await, updated);

    let cleared = client
        .set_task_metadata(app.grpc_request(SetTaskMetadataRequest {
            task_id: task.task_id.clone(),
            metadata: None,
        }))
        .await
        .expect("SetTaskMetadata with no metadata succeeds")
        .into_inner();
    assert_eq!(
        from_struct(cleared.metadata.as_ref().expect("metadata")),
        json!({}),
        "an absent Struct is the empty object"
    );
}

async fn update_and_delete_task_unique_id_set_and_free_the_unique_id(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    assert_eq!(task.unique_id, None);

    let updated = client
        .update_task_unique_id(app.grpc_request(UpdateTaskUniqueIdRequest {
            task_id: task.task_id.clone(),
            unique_id: "uid-1".to_owned(),
        }))
        .await
        .expect("UpdateTaskUniqueId succeeds")
        .into_inner();
    assert_eq!(updated.unique_id.as_deref(), Some("uid-1"));
    assert!(millis(&updated.updated_at) >= millis(&task.updated_at));

    let same = client
        .update_task_unique_id(app.grpc_request(UpdateTaskUniqueIdRequest {
            task_id: task.task_id.clone(),
            unique_id: "uid-1".to_owned(),
        }))
        .await
        .expect("setting a task's own unique_id again succeeds")
        .into_inner();
    assert_eq!(same, updated, "setting the current value is a no-op");

    let deleted = client
        .delete_task_unique_id(app.grpc_request(DeleteTaskUniqueIdRequest {
            task_id: task.task_id.clone(),
        }))
        .await
        .expect("DeleteTaskUniqueId succeeds")
        .into_inner();
    assert_eq!(deleted.unique_id, None);
    assert_eq!(get(&app, &mut client, &task.task_id).await.unique_id, None);

    let other = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("uid-1".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    assert_eq!(
        other.unique_id.as_deref(),
        Some("uid-1"),
        "the deleted unique_id is free"
    );
}

async fn add_set_and_delete_task_tags_edit_the_tag_list_in_order(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            tags: vec!["a".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let fields = |task_id: &str, tags: &[&str]| {
        (
            task_id.to_owned(),
            tags.iter().map(|tag| (*tag).to_owned()).collect::<Vec<_>>(),
        )
    };

    let added = client
        .add_task_tags(app.grpc_request({
            let (task_id, tags) = fields(&task.task_id, &["b", "a", "c", "b"]);
            AddTaskTagsRequest { task_id, tags }
        }))
        .await
        .expect("AddTaskTags succeeds")
        .into_inner();
    assert_eq!(
        added.tags,
        ["a", "b", "c"],
        "duplicates ignored, order kept"
    );

    let replaced = client
        .set_task_tags(app.grpc_request({
            let (task_id, tags) = fields(&task.task_id, &["z", "y"]);
            SetTaskTagsRequest { task_id, tags }
        }))
        .await
        .expect("SetTaskTags succeeds")
        .into_inner();
    assert_eq!(replaced.tags, ["z", "y"], "set replaces every tag");

    let removed = client
        .delete_task_tags(app.grpc_request({
            let (task_id, tags) = fields(&task.task_id, &["z", "not-there"]);
            DeleteTaskTagsRequest { task_id, tags }
        }))
        .await
        .expect("DeleteTaskTags succeeds")
        .into_inner();
    assert_eq!(removed.tags, ["y"]);
    assert_eq!(get(&app, &mut client, &task.task_id).await, removed);
}

async fn a_tag_edit_with_an_empty_tag_is_refused_and_changes_nothing(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            tags: vec!["keep".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let task_id = || task.task_id.clone();
    let tags = || vec!["fine".to_owned(), String::new()];
    assert_code(
        client
            .add_task_tags(app.grpc_request(AddTaskTagsRequest {
                task_id: task_id(),
                tags: tags(),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .set_task_tags(app.grpc_request(SetTaskTagsRequest {
                task_id: task_id(),
                tags: tags(),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .delete_task_tags(app.grpc_request(DeleteTaskTagsRequest {
                task_id: task_id(),
                tags: tags(),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(get(&app, &mut client, &task.task_id).await, task);
}

async fn audit_task_of_a_pending_task_is_invalid_argument_with_the_rest_message(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    let status = assert_code(
        client
            .audit_task(app.grpc_request(AuditTaskRequest {
                task_id: task.task_id.clone(),
                accepted: true,
                comments: Some("looks good".to_owned()),
                rework: false,
            }))
            .await,
        Code::InvalidArgument,
    );
    assert!(!error_info_reason(&status).is_empty());
    let rest_message = rest_error(
        &app,
        app.request(Method::POST, &format!("/v1/task/{}/audit", task.task_id))
            .json(&json!({"accepted": true, "comments": "looks good"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(status.message(), rest_message);
    let fetched = get(&app, &mut client, &task.task_id).await;
    assert!(fetched.audits.is_empty(), "nothing recorded");
    assert_eq!(fetched, task);
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn with_authorization<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    request
}

/// Calls every RPC with the given `authorization` metadata and returns each one's result code.
async fn call_every_rpc(
    client: &mut TaskServiceClient<Channel>,
    authorization: Option<&str>,
    task_id: &str,
) -> Vec<(&'static str, Code)> {
    fn code<T>(result: Result<tonic::Response<T>, Status>) -> Code {
        result.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    let id = || task_id.to_owned();
    let tags = || vec!["x".to_owned()];
    let auth = |message| with_authorization(message, authorization);
    vec![
        (
            "CreateTask",
            code(
                client
                    .create_task(with_authorization(image_task_request(), authorization))
                    .await,
            ),
        ),
        (
            "GetTask",
            code(
                client
                    .get_task(auth(GetTaskRequest { task_id: id() }))
                    .await,
            ),
        ),
        (
            "ListTasks",
            code(
                client
                    .list_tasks(with_authorization(
                        ListTasksRequest::default(),
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "CancelTask",
            code(
                client
                    .cancel_task(with_authorization(
                        CancelTaskRequest {
                            task_id: id(),
                            clear_unique_id: false,
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "SetTaskMetadata",
            code(
                client
                    .set_task_metadata(with_authorization(
                        SetTaskMetadataRequest {
                            task_id: id(),
                            metadata: Some(to_struct(json!({"a": 1}))),
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "UpdateTaskUniqueId",
            code(
                client
                    .update_task_unique_id(with_authorization(
                        UpdateTaskUniqueIdRequest {
                            task_id: id(),
                            unique_id: "u".to_owned(),
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "DeleteTaskUniqueId",
            code(
                client
                    .delete_task_unique_id(with_authorization(
                        DeleteTaskUniqueIdRequest { task_id: id() },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "AddTaskTags",
            code(
                client
                    .add_task_tags(with_authorization(
                        AddTaskTagsRequest {
                            task_id: id(),
                            tags: tags(),
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "SetTaskTags",
            code(
                client
                    .set_task_tags(with_authorization(
                        SetTaskTagsRequest {
                            task_id: id(),
                            tags: tags(),
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "DeleteTaskTags",
            code(
                client
                    .delete_task_tags(with_authorization(
                        DeleteTaskTagsRequest {
                            task_id: id(),
                            tags: tags(),
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
        (
            "AuditTask",
            code(
                client
                    .audit_task(with_authorization(
                        AuditTaskRequest {
                            task_id: id(),
                            accepted: true,
                            comments: None,
                            rework: false,
                        },
                        authorization,
                    ))
                    .await,
            ),
        ),
    ]
}

async fn every_rpc_without_an_api_key_is_unauthenticated(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    let unknown_live = format!("Bearer live_{}", "0".repeat(40));
    let unknown_test = format!("Bearer test_{}", "1".repeat(40));
    let no_user = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(":")
    );
    let wrong_scheme = format!("Token {}", app.api_key);
    let bad_values: [Option<&str>; 8] = [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer not-a-key"),
        Some(&unknown_live),
        Some(&unknown_test),
        Some(&no_user),
        Some(&wrong_scheme),
    ];
    for authorization in bad_values {
        // Both a real task id and a malformed one: authentication comes before any lookup.
        for task_id in [task.task_id.as_str(), "not-a-task-id"] {
            let codes = call_every_rpc(&mut client, authorization, task_id).await;
            assert_eq!(codes.len(), 11, "every RPC is exercised");
            for (rpc, code) in codes {
                assert_eq!(
                    code,
                    Code::Unauthenticated,
                    "{rpc} with authorization {authorization:?} and task id {task_id}"
                );
            }
        }
    }
    // Nothing was changed by the refused calls.
    assert_eq!(get(&app, &mut client, &task.task_id).await, task);
    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(page.total, 1, "no task was created without a key");
}

async fn an_unauthenticated_error_carries_error_info_and_the_rest_message(app: TestApp) {
    let mut client = app.grpc().await;
    let bogus = format!("live_{}", "a".repeat(40));
    let status = assert_code(
        client
            .get_task(grpc_request_as(
                &bogus,
                GetTaskRequest {
                    task_id: "0".repeat(24),
                },
            ))
            .await,
        Code::Unauthenticated,
    );
    assert!(!error_info_reason(&status).is_empty());
    let rest_message = rest_error(
        &app,
        app.request_as(&bogus, Method::GET, &format!("/v1/task/{}", "0".repeat(24))),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(status.message(), rest_message);
}

async fn bearer_and_basic_authorization_metadata_are_both_accepted(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    let basic_with_password = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.api_key))
    );
    let basic_without_colon = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&app.api_key)
    );
    let bearer = format!("Bearer {}", app.api_key);
    let lowercase_bearer = format!("bearer {}", app.api_key);
    for authorization in [
        bearer,
        lowercase_bearer,
        basic_with_password,
        basic_without_colon,
    ] {
        let fetched = client
            .get_task(with_authorization(
                GetTaskRequest {
                    task_id: task.task_id.clone(),
                },
                Some(&authorization),
            ))
            .await
            .unwrap_or_else(|status| panic!("{authorization}: {status:?}"))
            .into_inner();
        assert_eq!(fetched, task, "{authorization}");
    }
    let created = client
        .create_task(with_authorization(
            image_task_request(),
            Some(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.api_key))
            )),
        ))
        .await
        .expect("CreateTask with Basic succeeds")
        .into_inner();
    assert_eq!(created.status(), TaskStatus::Pending);
}

// ---------------------------------------------------------------------------------------------
// Not found and tenancy
// ---------------------------------------------------------------------------------------------

async fn malformed_and_unknown_task_ids_are_not_found_on_every_task_rpc(app: TestApp) {
    let mut client = app.grpc().await;
    let authorization = format!("Bearer {}", app.api_key);
    let unknown = format!("{:08x}{}", 1_700_000_000u32, "ab".repeat(8));
    for task_id in [
        unknown.as_str(),
        "not-a-task-id",
        "",
        "0123456789ABCDEF01234567",
        "0123456789abcdef0123456",
        "0123456789abcdef012345678",
        "../../etc/passwd",
    ] {
        let codes = call_every_rpc(&mut client, Some(&authorization), task_id).await;
        for (rpc, code) in codes {
            match rpc {
                "CreateTask" | "ListTasks" => assert_eq!(code, Code::Ok, "{rpc}"),
                _ => assert_eq!(code, Code::NotFound, "{rpc} with task id {task_id:?}"),
            }
        }
    }
}

async fn a_not_found_error_has_the_rest_message_and_error_info(app: TestApp) {
    let mut client = app.grpc().await;
    for task_id in [
        format!("{:08x}{}", 1_700_000_000u32, "cd".repeat(8)),
        "zzz".to_owned(),
    ] {
        let status = assert_code(
            client
                .get_task(app.grpc_request(GetTaskRequest {
                    task_id: task_id.clone(),
                }))
                .await,
            Code::NotFound,
        );
        assert!(!error_info_reason(&status).is_empty());
        let rest_message = rest_error(
            &app,
            app.request(Method::GET, &format!("/v1/task/{task_id}")),
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(status.message(), rest_message);
    }
}

async fn another_accounts_task_is_not_found_and_never_listed(app: TestApp) {
    let mut client = app.grpc().await;
    let mine = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("shared-uid".to_owned()),
            tags: vec!["mine".to_owned()],
            ..image_task_request()
        },
    )
    .await;
    let stranger = app.new_account_key(false).await;
    let authorization = format!("Bearer {stranger}");
    let codes = call_every_rpc(&mut client, Some(&authorization), &mine.task_id).await;
    for (rpc, code) in codes {
        match rpc {
            "CreateTask" | "ListTasks" => assert_eq!(code, Code::Ok, "{rpc}"),
            _ => assert_eq!(code, Code::NotFound, "{rpc} on another account's task"),
        }
    }
    let status = assert_code(
        client
            .get_task(grpc_request_as(
                &stranger,
                GetTaskRequest {
                    task_id: mine.task_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    let unknown = assert_code(
        client
            .get_task(grpc_request_as(
                &stranger,
                GetTaskRequest {
                    task_id: format!("{:08x}{}", 1_700_000_000u32, "ef".repeat(8)),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert_eq!(
        status.message(),
        unknown.message(),
        "indistinguishable from a missing task"
    );

    let theirs = client
        .list_tasks(grpc_request_as(&stranger, ListTasksRequest::default()))
        .await
        .expect("ListTasks")
        .into_inner();
    assert!(
        theirs.docs.iter().all(|task| task.task_id != mine.task_id),
        "never listed to another account"
    );
    assert_eq!(
        theirs.total, 1,
        "only the stranger's own CreateTask from above"
    );

    // unique_id is per account: the stranger may use the same value.
    let same_uid = client
        .create_task(grpc_request_as(
            &stranger,
            CreateTaskRequest {
                unique_id: Some("shared-uid".to_owned()),
                ..image_task_request()
            },
        ))
        .await
        .expect("another account may reuse a unique_id")
        .into_inner();
    assert_eq!(same_uid.unique_id.as_deref(), Some("shared-uid"));

    assert_eq!(
        get(&app, &mut client, &mine.task_id).await,
        mine,
        "untouched by the stranger"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn bad_creation_input_is_invalid_argument_with_the_rest_message(app: TestApp) {
    let mut client = app.grpc().await;
    let cases: Vec<(&str, CreateTaskRequest, &str, Value)> = vec![
        (
            "unknown type",
            CreateTaskRequest {
                r#type: "nosuchtype".to_owned(),
                ..image_task_request()
            },
            "nosuchtype",
            {
                let mut body = image_params();
                body["instruction"] = json!("Draw a box around each car");
                body
            },
        ),
        (
            "missing attachment",
            CreateTaskRequest {
                params: Some(to_struct(
                    json!({"geometries": {"box": {"objects_to_annotate": ["car"]}}}),
                )),
                ..image_task_request()
            },
            "imageannotation",
            json!({"instruction": "Draw a box around each car", "geometries": {"box": {"objects_to_annotate": ["car"]}}}),
        ),
        (
            "missing geometries",
            CreateTaskRequest {
                params: Some(to_struct(
                    json!({"attachment": "https://example.com/a.png"}),
                )),
                ..image_task_request()
            },
            "imageannotation",
            json!({"instruction": "Draw a box around each car", "attachment": "https://example.com/a.png"}),
        ),
        (
            "callback_url not http",
            CreateTaskRequest {
                callback_url: Some("ftp://example.com/x".to_owned()),
                ..image_task_request()
            },
            "imageannotation",
            {
                let mut body = image_params();
                body["instruction"] = json!("Draw a box around each car");
                body["callback_url"] = json!("ftp://example.com/x");
                body
            },
        ),
        (
            "empty tag",
            CreateTaskRequest {
                tags: vec!["ok".to_owned(), String::new()],
                ..image_task_request()
            },
            "imageannotation",
            {
                let mut body = image_params();
                body["instruction"] = json!("Draw a box around each car");
                body["tags"] = json!(["ok", ""]);
                body
            },
        ),
        (
            "empty unique_id",
            CreateTaskRequest {
                unique_id: Some(String::new()),
                ..image_task_request()
            },
            "imageannotation",
            {
                let mut body = image_params();
                body["instruction"] = json!("Draw a box around each car");
                body["unique_id"] = json!("");
                body
            },
        ),
        (
            "too long unique_id",
            CreateTaskRequest {
                unique_id: Some("u".repeat(256)),
                ..image_task_request()
            },
            "imageannotation",
            {
                let mut body = image_params();
                body["instruction"] = json!("Draw a box around each car");
                body["unique_id"] = json!("u".repeat(256));
                body
            },
        ),
        (
            "missing instruction for categorization",
            CreateTaskRequest {
                r#type: "categorization".to_owned(),
                params: Some(to_struct(
                    json!({"attachment": "https://example.com/a.png", "categories": ["a", "b"]}),
                )),
                instruction: None,
                ..Default::default()
            },
            "categorization",
            json!({"attachment": "https://example.com/a.png", "categories": ["a", "b"]}),
        ),
    ];
    for (case, request, rest_type, rest_body) in cases {
        let status = assert_code(
            client.create_task(app.grpc_request(request)).await,
            Code::InvalidArgument,
        );
        assert!(!status.message().is_empty(), "{case}");
        assert!(!error_info_reason(&status).is_empty(), "{case}");
        let rest_message = rest_error(
            &app,
            app.request(Method::POST, &format!("/v1/task/{rest_type}"))
                .json(&rest_body),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            status.message(),
            rest_message,
            "{case}: same message as REST"
        );
    }
    let required = [
        ("missing attachment", "attachment"),
        ("missing geometries", "geometries"),
        ("missing instruction", "instruction"),
    ];
    for (case, field) in required {
        let request = match case {
            "missing attachment" => CreateTaskRequest {
                params: Some(to_struct(json!({"geometries": {"box": {}}}))),
                ..image_task_request()
            },
            "missing geometries" => CreateTaskRequest {
                params: Some(to_struct(
                    json!({"attachment": "https://example.com/a.png"}),
                )),
                ..image_task_request()
            },
            _ => CreateTaskRequest {
                r#type: "categorization".to_owned(),
                params: Some(to_struct(
                    json!({"attachment": "https://example.com/a.png", "categories": ["a"]}),
                )),
                instruction: None,
                ..Default::default()
            },
        };
        let status = assert_code(
            client.create_task(app.grpc_request(request)).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().contains(field),
            "{case}: the message names '{field}': {}",
            status.message()
        );
    }
    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(page.total, 0, "no refused request created a task");
}

async fn bad_list_input_is_invalid_argument(app: TestApp) {
    let mut client = app.grpc().await;
    let cases = [
        (
            "limit 101",
            ListTasksRequest {
                limit: 101,
                ..Default::default()
            },
        ),
        (
            "limit -1",
            ListTasksRequest {
                limit: -1,
                ..Default::default()
            },
        ),
        (
            "malformed next_token",
            ListTasksRequest {
                next_token: "%%% not a token %%%".to_owned(),
                ..Default::default()
            },
        ),
        (
            "unknown status",
            ListTasksRequest {
                status: 42,
                ..Default::default()
            },
        ),
        (
            "unknown type",
            ListTasksRequest {
                r#type: "nosuchtype".to_owned(),
                ..Default::default()
            },
        ),
    ];
    for (case, request) in cases {
        let status = assert_code(
            client.list_tasks(app.grpc_request(request)).await,
            Code::InvalidArgument,
        );
        assert!(!status.message().is_empty(), "{case}");
    }
    let status = assert_code(
        client
            .list_tasks(app.grpc_request(ListTasksRequest {
                limit: 101,
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("limit"), "{}", status.message());
}

async fn bad_mutation_input_is_invalid_argument_and_changes_nothing(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("keep-me".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    assert_code(
        client
            .update_task_unique_id(app.grpc_request(UpdateTaskUniqueIdRequest {
                task_id: task.task_id.clone(),
                unique_id: String::new(),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .update_task_unique_id(app.grpc_request(UpdateTaskUniqueIdRequest {
                task_id: task.task_id.clone(),
                unique_id: "x".repeat(256),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .set_task_metadata(app.grpc_request(SetTaskMetadataRequest {
                task_id: task.task_id.clone(),
                metadata: Some(to_struct(json!({"big": "m".repeat(70 * 1024)}))),
            }))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(get(&app, &mut client, &task.task_id).await, task);
}

// ---------------------------------------------------------------------------------------------
// unique_id conflicts
// ---------------------------------------------------------------------------------------------

async fn a_unique_id_conflict_on_create_is_already_exists_with_error_info_naming_the_holder(
    app: TestApp,
) {
    let mut client = app.grpc().await;
    let holder = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("X".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let status = assert_code(
        client
            .create_task(app.grpc_request(CreateTaskRequest {
                unique_id: Some("X".to_owned()),
                r#type: "categorization".to_owned(),
                params: Some(to_struct(
                    json!({"attachment": "https://example.com/a.png", "categories": ["a"]}),
                )),
                ..image_task_request()
            }))
            .await,
        Code::AlreadyExists,
    );
    let expected = format!(
        "The unique_id (\"X\") is already used for a different task ({}).",
        holder.task_id
    );
    assert_eq!(status.message(), expected);

    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "UNIQUE_ID_CONFLICT");
    assert_eq!(
        info.metadata.get("conflicting_task_id").map(String::as_str),
        Some(holder.task_id.as_str())
    );
    let details = status.get_error_details();
    assert_eq!(
        details
            .error_info()
            .map(|info| info.reason.clone())
            .as_deref(),
        Some("UNIQUE_ID_CONFLICT")
    );

    let mut rest_body = image_params();
    rest_body["instruction"] = json!("Draw a box around each car");
    rest_body["unique_id"] = json!("X");
    let rest_message = rest_error(
        &app,
        app.request(Method::POST, "/v1/task/imageannotation")
            .json(&rest_body),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(status.message(), rest_message, "the same message as REST");

    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(page.total, 1, "the refused creation left nothing behind");
}

async fn a_unique_id_conflict_on_update_is_already_exists_and_leaves_both_tasks_unchanged(
    app: TestApp,
) {
    let mut client = app.grpc().await;
    let holder = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("taken \"quoted\" ü".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let other = create(
        &app,
        &mut client,
        CreateTaskRequest {
            unique_id: Some("mine".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let status = assert_code(
        client
            .update_task_unique_id(app.grpc_request(UpdateTaskUniqueIdRequest {
                task_id: other.task_id.clone(),
                unique_id: "taken \"quoted\" ü".to_owned(),
            }))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(
        status.message(),
        format!(
            "The unique_id (\"taken \"quoted\" ü\") is already used for a different task ({}).",
            holder.task_id
        )
    );
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "UNIQUE_ID_CONFLICT");
    assert_eq!(
        info.metadata.get("conflicting_task_id"),
        Some(&holder.task_id)
    );

    let rest_message = rest_error(
        &app,
        app.request(
            Method::POST,
            &format!("/v1/task/{}/unique_id", other.task_id),
        )
        .json(&json!({"unique_id": "taken \"quoted\" ü"})),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(status.message(), rest_message, "the same message as REST");

    assert_eq!(get(&app, &mut client, &holder.task_id).await, holder);
    assert_eq!(get(&app, &mut client, &other.task_id).await, other);
}

// ---------------------------------------------------------------------------------------------
// REST and gRPC see the same tasks
// ---------------------------------------------------------------------------------------------

async fn a_task_created_over_rest_is_the_same_task_over_grpc(app: TestApp) {
    let (status, rest) = app
        .create_image_task(json!({
            "unique_id": "rest-made",
            "metadata": {"a": 1, "b": [true, "x"], "c": {"d": 2.5}},
            "tags": ["one", "two"],
            "callback_url": "https://example.com/cb",
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    let mut client = app.grpc().await;
    let task_id = rest["task_id"].as_str().expect("task_id");
    let grpc = get(&app, &mut client, task_id).await;
    assert_same_task(&grpc, &rest);
    assert_eq!(grpc.tags, ["one", "two"]);
    assert_eq!(grpc.unique_id.as_deref(), Some("rest-made"));

    let page = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(page.docs, [grpc]);
}

async fn a_task_created_over_grpc_is_the_same_task_over_rest(app: TestApp) {
    let mut client = app.grpc().await;
    let grpc = create(
        &app,
        &mut client,
        CreateTaskRequest {
            metadata: Some(to_struct(
                json!({"a": 1, "b": [true, "x"], "c": {"d": 2.5}}),
            )),
            unique_id: Some("grpc-made".to_owned()),
            tags: vec!["one".to_owned(), "two".to_owned()],
            callback_url: Some("https://example.com/cb".to_owned()),
            ..image_task_request()
        },
    )
    .await;
    let (status, rest) = app.get(&format!("/v1/task/{}", grpc.task_id)).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_same_task(&grpc, &rest);
    assert_eq!(
        rest["metadata"],
        json!({"a": 1, "b": [true, "x"], "c": {"d": 2.5}})
    );
    assert_eq!(rest["params"], image_params());
    assert_eq!(rest["tags"], json!(["one", "two"]));

    let (status, page) = app.get("/v1/tasks").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], json!(1));
    assert_same_task(&grpc, &page["docs"][0]);
}

async fn grpc_mutations_are_visible_over_rest_and_rest_mutations_over_grpc(app: TestApp) {
    let mut client = app.grpc().await;
    let task = create(&app, &mut client, image_task_request()).await;
    let tagged = client
        .set_task_tags(app.grpc_request(SetTaskTagsRequest {
            task_id: task.task_id.clone(),
            tags: vec!["from-grpc".to_owned()],
        }))
        .await
        .expect("SetTaskTags")
        .into_inner();
    let (status, rest) = app.get(&format!("/v1/task/{}", task.task_id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_task(&tagged, &rest);

    let (status, rest) = app
        .post(
            &format!("/v1/task/{}/setMetadata", task.task_id),
            &json!({"from": "rest"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    let (status, rest) = app
        .post(
            &format!("/v1/task/{}/unique_id", task.task_id),
            &json!({"unique_id": "from-rest"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    let (status, rest) = app
        .post(&format!("/v1/task/{}/cancel", task.task_id), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    let fetched = get(&app, &mut client, &task.task_id).await;
    assert_same_task(&fetched, &rest);
    assert_eq!(fetched.status(), TaskStatus::Canceled);
    assert_eq!(fetched.unique_id.as_deref(), Some("from-rest"));
    assert_eq!(
        from_struct(fetched.metadata.as_ref().expect("metadata")),
        json!({"from": "rest"})
    );
    assert_eq!(fetched.tags, ["from-grpc"]);
}

async fn a_unique_id_taken_over_rest_conflicts_over_grpc(app: TestApp) {
    let (status, rest) = app.create_image_task(json!({"unique_id": "cross"})).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    let mut client = app.grpc().await;
    let status = assert_code(
        client
            .create_task(app.grpc_request(CreateTaskRequest {
                unique_id: Some("cross".to_owned()),
                ..image_task_request()
            }))
            .await,
        Code::AlreadyExists,
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("conflicting_task_id").map(String::as_str),
        rest["task_id"].as_str()
    );
}

// ---------------------------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------------------------

async fn the_grpc_health_service_answers_serving(app: TestApp) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let channel = Channel::from_shared(app.base_url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "annotask.v1.TaskService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("health of {service:?}: {status:?}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("an unknown service has no health");
    assert_eq!(unknown.code(), Code::NotFound);
}

const EXPECTED_SERVICES: [&str; 7] = [
    "annotask.v1.TaskService",
    "annotask.v1.WorkService",
    "annotask.v1.ProjectService",
    "annotask.v1.BatchService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn both_reflection_versions_list_every_service(app: TestApp) {
    use futures::StreamExt as _;
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = Channel::from_shared(app.base_url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1 reflection answers")
        .into_inner();
    let response = stream.next().await.expect("one response").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("v1: not a list: {response:?}");
    };
    let names: BTreeSet<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in EXPECTED_SERVICES {
        assert!(names.contains(expected), "v1 lists {expected}: {names:?}");
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let response = stream.next().await.expect("one response").expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("v1alpha: not a list: {response:?}");
    };
    let names: BTreeSet<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in EXPECTED_SERVICES {
        assert!(
            names.contains(expected),
            "v1alpha lists {expected}: {names:?}"
        );
    }
}

/// Runs `grpcurl ARGS`, or `None` (after a loud skip) when it is not installed.
async fn grpcurl(args: &[&str]) -> Option<std::process::Output> {
    match tokio::process::Command::new("grpcurl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
    {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            crate::helpers::skip("grpcurl not installed");
            None
        }
        Err(err) => panic!("cannot run grpcurl: {err}"),
    }
}

async fn grpcurl_lists_every_service_through_reflection_without_proto_files(app: TestApp) {
    let addr = app.addr.to_string();
    let Some(output) = grpcurl(&["-plaintext", &addr, "list"]).await else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcurl list failed: {stdout}\n{stderr}"
    );
    let listed: BTreeSet<&str> = stdout.lines().map(str::trim).collect();
    for expected in EXPECTED_SERVICES {
        assert!(
            listed.contains(expected),
            "grpcurl lists {expected}: {stdout}"
        );
    }
}

async fn grpcurl_can_describe_and_call_get_task_through_reflection(app: TestApp) {
    let addr = app.addr.to_string();
    let Some(output) = grpcurl(&["-plaintext", &addr, "describe", "annotask.v1.TaskService"]).await
    else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpcurl describe failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for rpc in [
        "CreateTask",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SetTaskMetadata",
        "UpdateTaskUniqueId",
        "DeleteTaskUniqueId",
        "AddTaskTags",
        "SetTaskTags",
        "DeleteTaskTags",
        "AuditTask",
    ] {
        let shown =
            stdout.contains(&format!("rpc {rpc} (")) || stdout.contains(&format!("rpc {rpc}("));
        assert!(shown, "describe shows {rpc}: {stdout}");
    }

    let mut client = app.grpc().await;
    let task = create(
        &app,
        &mut client,
        CreateTaskRequest {
            metadata: Some(to_struct(json!({"via": "grpcurl"}))),
            ..image_task_request()
        },
    )
    .await;
    let header = format!("authorization: Bearer {}", app.api_key);
    let data = json!({"task_id": task.task_id}).to_string();
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &data,
        &addr,
        "annotask.v1.TaskService/GetTask",
    ])
    .await
    .expect("grpcurl ran a moment ago");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpcurl GetTask failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body: Value = serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    let task_id = body.get("taskId").or_else(|| body.get("task_id"));
    assert_eq!(task_id, Some(&json!(task.task_id)), "{body}");
    assert_eq!(body["metadata"], json!({"via": "grpcurl"}));
    assert_eq!(body["status"], json!("TASK_STATUS_PENDING"));

    let output = grpcurl(&[
        "-plaintext",
        "-d",
        &data,
        &addr,
        "annotask.v1.TaskService/GetTask",
    ])
    .await
    .expect("grpcurl ran a moment ago");
    assert!(!output.status.success(), "no key must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(
        stderr.contains(r#""reason":"UNAUTHENTICATED""#),
        "grpcurl decodes the ErrorInfo detail through reflection: {stderr}"
    );

    let authorization = format!("authorization: Bearer {}", app.api_key);
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"task_id": "000000000000000000000000"}"#,
        &addr,
        "annotask.v1.TaskService/GetTask",
    ])
    .await
    .expect("grpcurl ran a moment ago");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NotFound"), "{stderr}");
    assert!(
        stderr.contains(r#""@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"annotask","reason":"NOT_FOUND""#),
        "{stderr}"
    );
    assert!(!stderr.contains("not recognized"), "{stderr}");
}

async fn a_test_world_task_is_completed_cannot_be_canceled_and_can_be_audited(app: TestApp) {
    let test_key = app.new_account_key(true).await;
    let mut client = app.grpc().await;
    let task = client
        .create_task(grpc_request_as(&test_key, image_task_request()))
        .await
        .expect("CreateTask succeeds")
        .into_inner();
    assert_eq!(task.status, proto::TaskStatus::Completed as i32);
    assert!(task.is_test);
    assert!(task.completed_at.is_some());
    assert!(task.response.as_ref().is_some_and(|r| !r.fields.is_empty()));

    let status = assert_code(
        client
            .cancel_task(grpc_request_as(
                &test_key,
                CancelTaskRequest {
                    task_id: task.task_id.clone(),
                    clear_unique_id: false,
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        status.message(),
        "The task was already completed and cannot be canceled."
    );

    let audited = client
        .audit_task(grpc_request_as(
            &test_key,
            AuditTaskRequest {
                task_id: task.task_id.clone(),
                accepted: false,
                comments: Some("boxes too loose".to_owned()),
                rework: false,
            },
        ))
        .await
        .expect("AuditTask succeeds")
        .into_inner();
    assert_eq!(audited.audits.len(), 1);
    assert!(!audited.audits[0].accepted);
    assert_eq!(audited.customer_review_status.as_deref(), Some("rejected"));
}

backend_tests!(
    a_test_world_task_is_completed_cannot_be_canceled_and_can_be_audited,
    create_task_returns_a_pending_task_with_every_given_field,
    create_task_without_metadata_gives_an_empty_metadata_object_and_no_unique_id,
    get_task_returns_the_task_as_created,
    list_tasks_pages_with_next_token_and_reports_the_same_total_on_every_page,
    list_tasks_with_limit_zero_uses_the_default_of_100_and_has_no_next_token,
    list_tasks_filters_by_unique_id_tags_and_status,
    list_tasks_with_limited_response_keeps_only_id_status_and_metadata,
    cancel_task_cancels_a_pending_task_and_is_idempotent,
    cancel_task_with_clear_unique_id_frees_the_unique_id,
    cancel_task_with_clear_unique_id_on_an_already_canceled_task_still_clears_it,
    set_task_metadata_replaces_the_metadata_and_bumps_updated_at,
    update_and_delete_task_unique_id_set_and_free_the_unique_id,
    add_set_and_delete_task_tags_edit_the_tag_list_in_order,
    a_tag_edit_with_an_empty_tag_is_refused_and_changes_nothing,
    audit_task_of_a_pending_task_is_invalid_argument_with_the_rest_message,
    every_rpc_without_an_api_key_is_unauthenticated,
    an_unauthenticated_error_carries_error_info_and_the_rest_message,
    bearer_and_basic_authorization_metadata_are_both_accepted,
    malformed_and_unknown_task_ids_are_not_found_on_every_task_rpc,
    a_not_found_error_has_the_rest_message_and_error_info,
    another_accounts_task_is_not_found_and_never_listed,
    bad_creation_input_is_invalid_argument_with_the_rest_message,
    bad_list_input_is_invalid_argument,
    bad_mutation_input_is_invalid_argument_and_changes_nothing,
    a_unique_id_conflict_on_create_is_already_exists_with_error_info_naming_the_holder,
    a_unique_id_conflict_on_update_is_already_exists_and_leaves_both_tasks_unchanged,
    a_task_created_over_rest_is_the_same_task_over_grpc,
    a_task_created_over_grpc_is_the_same_task_over_rest,
    grpc_mutations_are_visible_over_rest_and_rest_mutations_over_grpc,
    a_unique_id_taken_over_rest_conflicts_over_grpc,
    the_grpc_health_service_answers_serving,
    both_reflection_versions_list_every_service,
    grpcurl_lists_every_service_through_reflection_without_proto_files,
    grpcurl_can_describe_and_call_get_task_through_reflection,
);
