//! Scale's JSON shapes for tasks and task pages.

use serde_json::{json, Map, Value};

use crate::{
    domain::{Batch, BatchCounts, Project, Task},
    service::{BatchPage, TaskPage},
};

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
    if let Some(version) = task.project_param_version {
        doc.insert("project_param_version".into(), json!(version));
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
    // Scale's Python client requires the key even when paging by cursor.
    doc.insert("offset".into(), json!(page.offset));
    doc.insert("has_more".into(), json!(page.has_more));
    if let Some(token) = &page.next_token {
        doc.insert("next_token".into(), json!(token));
    }
    Value::Object(doc)
}

/// A project as Scale returns it: each `param_history` entry is its params with `version`
/// and `created_at` beside them.
pub fn project(project: &Project) -> Value {
    let history: Vec<Value> = project
        .param_history
        .iter()
        .map(|entry| {
            let mut doc = entry.params.clone();
            doc.insert("version".into(), json!(entry.version));
            doc.insert("created_at".into(), json!(entry.created_at.to_iso()));
            Value::Object(doc)
        })
        .collect();
    json!({
        "name": project.name,
        "type": project.task_type,
        "created_at": project.created_at.to_iso(),
        "param_history": history,
    })
}

pub fn batch(batch: &Batch) -> Value {
    let mut doc = Map::new();
    doc.insert("name".into(), json!(batch.name));
    doc.insert("project".into(), json!(batch.project));
    doc.insert("status".into(), json!(batch.status.as_str()));
    doc.insert("created_at".into(), json!(batch.created_at.to_iso()));
    doc.insert("updated_at".into(), json!(batch.updated_at.to_iso()));
    if let Some(completed_at) = batch.completed_at {
        doc.insert("completed_at".into(), json!(completed_at.to_iso()));
    }
    // Scale shows an empty string when no callback is set.
    doc.insert(
        "callback".into(),
        json!(batch.callback.as_deref().unwrap_or("")),
    );
    doc.insert("metadata".into(), Value::Object(batch.metadata.clone()));
    Value::Object(doc)
}

/// `GET /v1/batches`: Scale's envelope, with `total` beside Scale's `totalDocs`.
pub fn batch_page(page: &BatchPage) -> Value {
    json!({
        "docs": page.docs.iter().map(batch).collect::<Vec<_>>(),
        "totalDocs": page.total,
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
        "has_more": page.has_more,
    })
}

pub fn batch_status(batch: &Batch, counts: &BatchCounts) -> Value {
    json!({
        "status": batch.status.as_str(),
        "pending": counts.pending,
        "completed": counts.completed,
        "error": counts.error,
        "canceled": counts.canceled,
    })
}
