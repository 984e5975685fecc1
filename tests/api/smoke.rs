use reqwest::StatusCode;
use serde_json::json;

use crate::{backend_tests, helpers::TestApp};

async fn a_created_task_can_be_fetched_over_rest(app: TestApp) {
    let (status, created) = app.create_image_task(json!({"unique_id": "smoke-1"})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let task_id = created["task_id"].as_str().expect("task_id");
    let (status, fetched) = app.get(&format!("/v1/task/{task_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);
}

backend_tests!(a_created_task_can_be_fetched_over_rest);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rest_routes_and_grpc_methods_by_name() {
    let Some(app) = TestApp::spawn(crate::helpers::Backend::Sqlite).await else {
        return;
    };
    annotask::telemetry::prometheus();
    let (status, _) = app.get("/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let mut client = app.grpc().await;
    client
        .list_tasks(app.grpc_request(annotask::proto::ListTasksRequest::default()))
        .await
        .expect("listed");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    for route in [
        r#"route="/v1/tasks""#,
        r#"route="/annotask.v1.TaskService/ListTasks""#,
    ] {
        assert!(metrics.contains(route), "{route} missing from:\n{metrics}");
    }
}
