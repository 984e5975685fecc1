//! Scale's JSON shapes for tasks and task pages.

use serde::{
    ser::{SerializeMap, SerializeSeq},
    Serialize, Serializer,
};
use serde_json::{json, Map, Value};

use crate::{
    domain::{Audit, Batch, BatchCounts, Project, Task},
    service::{BatchPage, TaskPage},
};

/// A task as Scale shows it, serialised straight from the task (no intermediate `Value`: list
/// pages and exports write thousands). Keys in alphabetical order, as a `serde_json::Map` has them.
pub struct TaskJson<'a>(pub &'a Task);

impl Serialize for TaskJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let task = self.0;
        let mut doc = serializer.serialize_map(None)?;
        doc.serialize_entry("audits", &Audits(&task.audits))?;
        if let Some(batch) = &task.batch {
            doc.serialize_entry("batch", batch)?;
        }
        if let Some(succeeded) = task.callback_succeeded {
            doc.serialize_entry("callback_succeeded", &succeeded)?;
        }
        // Scale shows an empty string when no callback is set.
        doc.serialize_entry("callback_url", task.callback_url.as_deref().unwrap_or(""))?;
        if let Some(completed_at) = task.completed_at {
            doc.serialize_entry("completed_at", &completed_at.to_iso())?;
        }
        doc.serialize_entry("created_at", &task.created_at.to_iso())?;
        if let Some(review) = &task.customer_review_status {
            doc.serialize_entry("customer_review_status", review)?;
        }
        if let Some(instruction) = &task.instruction {
            doc.serialize_entry("instruction", instruction)?;
        }
        doc.serialize_entry("is_test", &task.scope.is_test)?;
        doc.serialize_entry("metadata", &task.metadata)?;
        doc.serialize_entry("params", &task.params)?;
        if let Some(project) = &task.project {
            doc.serialize_entry("project", project)?;
        }
        if let Some(version) = task.project_param_version {
            doc.serialize_entry("project_param_version", &version)?;
        }
        if let Some(response) = &task.response {
            doc.serialize_entry("response", response)?;
        }
        doc.serialize_entry("status", task.status.as_str())?;
        if let Some(tags) = &task.tags {
            doc.serialize_entry("tags", tags)?;
        }
        doc.serialize_entry("task_id", task.id.as_str())?;
        doc.serialize_entry("type", &task.task_type)?;
        if let Some(unique_id) = &task.unique_id {
            doc.serialize_entry("unique_id", unique_id)?;
        }
        doc.serialize_entry("updated_at", &task.updated_at.to_iso())?;
        doc.end()
    }
}

struct Audits<'a>(&'a [Audit]);

impl Serialize for Audits<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut audits = serializer.serialize_seq(Some(self.0.len()))?;
        for audit in self.0 {
            audits.serialize_element(&AuditJson(audit))?;
        }
        audits.end()
    }
}

struct AuditJson<'a>(&'a Audit);

impl Serialize for AuditJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let audit = self.0;
        let mut entry = serializer.serialize_map(None)?;
        entry.serialize_entry("accepted", &audit.accepted)?;
        if let Some(comments) = &audit.comments {
            entry.serialize_entry("comments", comments)?;
        }
        entry.serialize_entry("created_at", &audit.created_at.to_iso())?;
        entry.end()
    }
}

/// The task as a JSON value, for answers that embed it (callbacks, leases).
pub fn task(task: &Task) -> Value {
    serde_json::to_value(TaskJson(task)).unwrap_or_else(|err| {
        tracing::error!(error = %err, "a task could not be rendered as JSON");
        Value::Null
    })
}

/// A task page, serialised straight from the tasks.
pub struct PageJson<'a>(pub &'a TaskPage);

impl Serialize for PageJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let page = self.0;
        let mut doc = serializer.serialize_map(None)?;
        if page.limited_response {
            let docs: Vec<Value> = page.docs.iter().map(limited_task).collect();
            doc.serialize_entry("docs", &docs)?;
        } else {
            let docs: Vec<TaskJson<'_>> = page.docs.iter().map(TaskJson).collect();
            doc.serialize_entry("docs", &docs)?;
        }
        doc.serialize_entry("has_more", &page.has_more)?;
        doc.serialize_entry("limit", &page.limit)?;
        if let Some(token) = &page.next_token {
            doc.serialize_entry("next_token", token)?;
        }
        // Scale's Python client requires the key even when paging by cursor.
        doc.serialize_entry("offset", &page.offset)?;
        doc.serialize_entry("total", &page.total)?;
        doc.end()
    }
}

/// `limited_response=true`: only what a status poller needs.
fn limited_task(task: &Task) -> Value {
    let mut doc = Map::new();
    doc.insert("task_id".into(), json!(task.id.as_str()));
    doc.insert("status".into(), json!(task.status.as_str()));
    doc.insert("metadata".into(), Value::Object(task.metadata.to_map()));
    if let Some(project) = &task.project {
        doc.insert("project".into(), json!(project));
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
