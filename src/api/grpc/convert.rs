//! Conversions between the domain and protobuf messages.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use super::JsonStruct;
use crate::{
    api::grpc::proto,
    domain::{Batch, BatchCounts, BatchStatus, Project, Task, TaskStatus, Timestamp},
    error::Error,
    service::{BatchPage, TaskPage},
};

/// A stored JSON object's text (checked when it was stored) as a `Struct`, written straight
/// into wire bytes.
pub fn object_text_to_struct(text: &str) -> JsonStruct {
    JsonStruct::from_object_text(text).unwrap_or_else(|err| {
        tracing::error!(error = %err, "a checked JSON object failed to parse");
        JsonStruct::default()
    })
}

pub fn json_to_struct(object: &Map<String, Value>) -> JsonStruct {
    JsonStruct::from_object(object)
}

/// A request's `Struct` as a JSON object.
pub fn struct_to_json(value: JsonStruct) -> Map<String, Value> {
    let fields = value.into_fields().unwrap_or_else(|err| {
        // Only the server's own answers hold written bytes, and it never reads those back.
        tracing::error!(error = %err, "a written Struct failed to decode");
        prost_types::Struct::default()
    });
    fields_to_json(fields)
}

fn fields_to_json(fields: prost_types::Struct) -> Map<String, Value> {
    fields
        .fields
        .into_iter()
        .map(|(key, value)| (key, value_to_json(value)))
        .collect()
}

/// An optional `Struct` field as a JSON object (`{}` when unset).
pub fn object_or_empty(value: Option<JsonStruct>) -> Map<String, Value> {
    value.map(struct_to_json).unwrap_or_default()
}

fn value_to_json(value: prost_types::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(flag),
        Some(Kind::NumberValue(number)) => number_to_json(number),
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(fields)) => Value::Object(fields_to_json(fields)),
    }
}

/// Struct numbers are doubles; whole ones go back to JSON integers so `3` stays `3`.
fn number_to_json(number: f64) -> Value {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if number.fract() == 0.0 && number.abs() < EXACT_INTEGER_LIMIT {
        Value::Number(Number::from(number as i64))
    } else {
        Number::from_f64(number).map_or(Value::Null, Value::Number)
    }
}

pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.seconds(),
        nanos: at.subsec_nanos(),
    }
}

pub fn from_timestamp(name: &str, at: prost_types::Timestamp) -> Result<Timestamp, Error> {
    Timestamp::from_parts(at.seconds, at.nanos)
        .ok_or_else(|| Error::invalid(format!("Field '{name}' is not a valid time.")))
}

pub fn status(status: TaskStatus) -> proto::TaskStatus {
    match status {
        TaskStatus::Pending => proto::TaskStatus::Pending,
        TaskStatus::Completed => proto::TaskStatus::Completed,
        TaskStatus::Canceled => proto::TaskStatus::Canceled,
        TaskStatus::Error => proto::TaskStatus::Error,
    }
}

/// `None` for `UNSPECIFIED` (no filter); unknown numbers are an error.
pub fn from_status(value: i32) -> Result<Option<TaskStatus>, Error> {
    match proto::TaskStatus::try_from(value) {
        Ok(proto::TaskStatus::Unspecified) => Ok(None),
        Ok(proto::TaskStatus::Pending) => Ok(Some(TaskStatus::Pending)),
        Ok(proto::TaskStatus::Completed) => Ok(Some(TaskStatus::Completed)),
        Ok(proto::TaskStatus::Canceled) => Ok(Some(TaskStatus::Canceled)),
        Ok(proto::TaskStatus::Error) => Ok(Some(TaskStatus::Error)),
        Err(_) => Err(Error::invalid(format!(
            "Field 'status' has an unknown value {value}."
        ))),
    }
}

pub fn task_event(event: crate::service::TaskEvent) -> proto::TaskEvent {
    use crate::store::ChangeKind;
    let kind = match event.kind {
        ChangeKind::Created => proto::TaskEventKind::Created,
        ChangeKind::Updated => proto::TaskEventKind::Updated,
        ChangeKind::Canceled => proto::TaskEventKind::Canceled,
        ChangeKind::Completed => proto::TaskEventKind::Completed,
        ChangeKind::Failed => proto::TaskEventKind::Failed,
    };
    proto::TaskEvent {
        task: Some(task(event.task)),
        kind: kind.into(),
    }
}

pub fn task(task: Task) -> proto::Task {
    proto::Task {
        task_id: task.id.into_string(),
        created_at: Some(timestamp(task.created_at)),
        updated_at: Some(timestamp(task.updated_at)),
        completed_at: task.completed_at.map(timestamp),
        r#type: task.task_type,
        status: status(task.status).into(),
        instruction: task.instruction,
        params: Some(object_text_to_struct(task.params.as_str())),
        callback_url: task.callback_url,
        metadata: Some(object_text_to_struct(task.metadata.as_str())),
        unique_id: task.unique_id,
        tags: task.tags.unwrap_or_default(),
        project: task.project,
        project_param_version: task.project_param_version,
        batch: task.batch,
        response: task.response.map(|response| match response {
            Value::Object(map) => json_to_struct(&map),
            other => json_to_struct(&Map::from_iter([("value".to_owned(), other)])),
        }),
        callback_succeeded: task.callback_succeeded,
        audits: task
            .audits
            .into_iter()
            .map(|audit| proto::Audit {
                accepted: audit.accepted,
                comments: audit.comments,
                created_at: Some(timestamp(audit.created_at)),
            })
            .collect(),
        is_test: task.scope.is_test,
        customer_review_status: task.customer_review_status,
    }
}

/// Same fields as REST's `limited_response=true`.
fn limited_task(task: Task) -> proto::Task {
    proto::Task {
        task_id: task.id.into_string(),
        status: status(task.status).into(),
        metadata: Some(object_text_to_struct(task.metadata.as_str())),
        project: task.project,
        ..Default::default()
    }
}

pub fn page(page: TaskPage) -> proto::ListTasksResponse {
    let render = if page.limited_response {
        limited_task
    } else {
        task
    };
    proto::ListTasksResponse {
        docs: page.docs.into_iter().map(render).collect(),
        total: i64::try_from(page.total).unwrap_or(i64::MAX),
        limit: i32::try_from(page.limit).unwrap_or(i32::MAX),
        offset: i32::try_from(page.offset).unwrap_or(i32::MAX),
        has_more: page.has_more,
        next_token: page.next_token,
    }
}

pub fn project(project: Project) -> proto::Project {
    proto::Project {
        name: project.name,
        r#type: project.task_type,
        created_at: Some(timestamp(project.created_at)),
        param_history: project
            .param_history
            .into_iter()
            .map(|entry| proto::ProjectParams {
                version: entry.version,
                created_at: Some(timestamp(entry.created_at)),
                params: Some(json_to_struct(&entry.params)),
            })
            .collect(),
    }
}

pub fn batch_status(status: BatchStatus) -> proto::BatchStatus {
    match status {
        BatchStatus::Staging => proto::BatchStatus::Staging,
        BatchStatus::InProgress => proto::BatchStatus::InProgress,
        BatchStatus::Completed => proto::BatchStatus::Completed,
    }
}

/// `None` for `UNSPECIFIED` (no filter); unknown numbers are an error.
pub fn from_batch_status(value: i32) -> Result<Option<BatchStatus>, Error> {
    match proto::BatchStatus::try_from(value) {
        Ok(proto::BatchStatus::Unspecified) => Ok(None),
        Ok(proto::BatchStatus::Staging) => Ok(Some(BatchStatus::Staging)),
        Ok(proto::BatchStatus::InProgress) => Ok(Some(BatchStatus::InProgress)),
        Ok(proto::BatchStatus::Completed) => Ok(Some(BatchStatus::Completed)),
        Err(_) => Err(Error::invalid(format!(
            "Field 'status' has an unknown value {value}."
        ))),
    }
}

pub fn batch(batch: Batch) -> proto::Batch {
    proto::Batch {
        name: batch.name,
        project: batch.project,
        status: batch_status(batch.status).into(),
        created_at: Some(timestamp(batch.created_at)),
        updated_at: Some(timestamp(batch.updated_at)),
        completed_at: batch.completed_at.map(timestamp),
        callback: batch.callback.unwrap_or_default(),
        metadata: Some(json_to_struct(&batch.metadata)),
    }
}

pub fn batch_page(page: BatchPage) -> proto::ListBatchesResponse {
    proto::ListBatchesResponse {
        docs: page.docs.into_iter().map(batch).collect(),
        total: i64::try_from(page.total).unwrap_or(i64::MAX),
        limit: i32::try_from(page.limit).unwrap_or(i32::MAX),
        offset: i32::try_from(page.offset).unwrap_or(i32::MAX),
        has_more: page.has_more,
    }
}

pub fn batch_counts(batch: &Batch, counts: BatchCounts) -> proto::GetBatchStatusResponse {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    proto::GetBatchStatusResponse {
        status: batch_status(batch.status).into(),
        pending: count(counts.pending),
        completed: count(counts.completed),
        error: count(counts.error),
        canceled: count(counts.canceled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_survives_a_trip_through_struct() {
        let original = json!({"a": 3, "b": 1.5, "c": [true, null, "x"], "d": {"e": -7}});
        let map = original.as_object().unwrap();
        let back = struct_to_json(json_to_struct(map));
        assert_eq!(Value::Object(back), original);
        let request = JsonStruct::Decoded(crate::proto::struct_from_json(map));
        assert_eq!(Value::Object(struct_to_json(request)), original);
    }

    #[test]
    fn a_stored_object_that_fails_to_parse_answers_an_empty_struct() {
        assert_eq!(object_text_to_struct("[1]"), JsonStruct::default());
        assert_eq!(object_text_to_struct("{"), JsonStruct::default());
    }
}
