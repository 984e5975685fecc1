//! Scale's JSON shapes for tasks and task pages.

use serde_json::{json, Map, Value};

use crate::{domain::Task, service::TaskPage};

pub fn task(task: &Task) -> Value {
    let mut doc = Map::new();
    doc.insert("task_id".into(), json!(task.id.as_str()));
    doc.insert("created_at".into(), json!(task.created_at.to_iso()));
    doc.insert("updated_at".into(), json!(task.updated_at.to_iso()));
    if let Some(completed_at) = task.completed_at {
        doc.insert("completed_at".into(), json!(completed_at.to_iso()));
    }
    doc.insert("type".into(), json!(task.task_type));
    doc.insert("status".into(), json!(task.status.as_str()));
    if let Some(instruction) = &task.instruction {
        doc.insert("instruction".into(), json!(instruction));
    }
    doc.insert("params".into(), Value::Object(task.params.clone()));
    // Scale shows an empty string when no callback is set.
    doc.insert(
        "callback_url".into(),
        json!(task.callback_url.as_deref().unwrap_or("")),
    );
    doc.insert("metadata".into(), Value::Object(task.metadata.clone()));
    if let Some(unique_id) = &task.unique_id {
        doc.insert("unique_id".into(), json!(unique_id));
    }
    if let Some(tags) = &task.tags {
        doc.insert("tags".into(), json!(tags));
    }
    if let Some(project) = &task.project {
        doc.insert("project".into(), json!(project));
    }
    if let Some(batch) = &task.batch {
        doc.insert("batch".into(), json!(batch));
    }
    if let Some(response) = &task.response {
        doc.insert("response".into(), response.clone());
    }
    if let Some(succeeded) = task.callback_succeeded {
        doc.insert("callback_succeeded".into(), json!(succeeded));
    }
    let audits: Vec<Value> = task
        .audits
        .iter()
        .map(|audit| {
            let mut entry = Map::new();
            entry.insert("accepted".into(), json!(audit.accepted));
            if let Some(comments) = &audit.comments {
                entry.insert("comments".into(), json!(comments));
            }
            entry.insert("created_at".into(), json!(audit.created_at.to_iso()));
            Value::Object(entry)
        })
        .collect();
    doc.insert("audits".into(), Value::Array(audits));
    if let Some(review) = &task.customer_review_status {
        doc.insert("customer_review_status".into(), json!(review));
    }
    doc.insert("is_test".into(), json!(task.scope.is_test));
    Value::Object(doc)
}

/// `limited_response=true`: only what a status poller needs.
fn limited_task(task: &Task) -> Value {
    let mut doc = Map::new();
    doc.insert("task_id".into(), json!(task.id.as_str()));
    doc.insert("status".into(), json!(task.status.as_str()));
    doc.insert("metadata".into(), Value::Object(task.metadata.clone()));
    if let Some(project) = &task.project {
        doc.insert("project".into(), json!(project));
    }
    Value::Object(doc)
}

pub fn page(page: &TaskPage) -> Value {
    let render = if page.limited_response {
        limited_task
    } else {
        task
    };
    let mut doc = Map::new();
    doc.insert(
        "docs".into(),
        Value::Array(page.docs.iter().map(render).collect()),
    );
    doc.insert("total".into(), json!(page.total));
    doc.insert("limit".into(), json!(page.limit));
    // Paging is by cursor; Scale's Python client requires the key all the same.
    doc.insert("offset".into(), json!(0));
    doc.insert("has_more".into(), json!(page.has_more));
    if let Some(token) = &page.next_token {
        doc.insert("next_token".into(), json!(token));
    }
    Value::Object(doc)
}
