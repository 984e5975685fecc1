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
