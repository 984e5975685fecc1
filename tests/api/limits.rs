//! Body size limits answer 413 / RESOURCE_EXHAUSTED on every transport.

use annotask::proto::CreateTaskRequest;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp};

async fn small_limit_app() -> Option<TestApp> {
    TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.max_body_bytes = 4096;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_body_over_the_configured_limit_is_413_with_a_json_error() {
    let Some(app) = small_limit_app().await else {
        return;
    };
    let body = json!({
        "attachment": "https://e.com/a.png",
        "geometries": {"box": {}},
        "instruction": "x".repeat(8192),
    });
    let (status, error) = app
        .send(
            app.request(Method::POST, "/v1/task/imageannotation")
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["status_code"], 413);
    assert!(error["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_the_configured_limit_is_resource_exhausted() {
    let Some(app) = small_limit_app().await else {
        return;
    };
    let mut client = app.grpc().await;
    let request = CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        instruction: Some("x".repeat(8192)),
        ..Default::default()
    };
    let status = client
        .create_task(app.grpc_request(request))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}
