//! `annotask.v1.TaskService`.

use std::pin::Pin;

use futures_util::Stream;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::{convert, idempotency_key, mark_replayed, non_empty, GrpcApi};
use crate::{
    api::grpc::proto::{self, task_service_server::TaskService},
    domain::{Caller, ListQuery, TaskFilter, TimeRange},
    error::Error,
    service::{TagEdit, TaskWatch, WatchEnd},
};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::TaskEvent, Status>> + Send>>;

/// A watch's events, then the status that ended it.
fn watch_stream(watch: TaskWatch) -> WatchStream {
    Box::pin(futures_util::stream::unfold(
        Some(watch),
        |watch| async move {
            let mut watch = watch?;
            match watch.next().await {
                Ok(event) => Some((Ok(convert::task_event(event)), Some(watch))),
                Err(end) => {
                    let status = match end {
                        WatchEnd::FellBehind { .. } => Status::resource_exhausted(end.to_string()),
                        WatchEnd::Interrupted | WatchEnd::ShuttingDown => {
                            Status::unavailable(end.to_string())
                        }
                    };
                    Some((Err(status), None))
                }
            }
        },
    ))
}

/// The list's filters (SPEC §6) from a request that carries them (`ListTasksRequest`,
/// `WatchTasksRequest`): the same fields under the same names, in two message types.
macro_rules! task_filter {
    ($request:ident) => {
        TaskFilter {
            created: time_range(
                "start_time",
                $request.start_time,
                "end_time",
                $request.end_time,
            )?,
            completed: time_range(
                "completed_after",
                $request.completed_after,
                "completed_before",
                $request.completed_before,
            )?,
            updated: time_range(
                "updated_after",
                $request.updated_after,
                "updated_before",
                $request.updated_before,
            )?,
            status: convert::from_status($request.status)?,
            task_type: non_empty($request.r#type),
            project: non_empty($request.project),
            batch: non_empty($request.batch),
            unique_ids: $request.unique_id,
            tags: $request.tags,
            customer_review_statuses: $request.customer_review_status,
        }
    };
}

fn watch_filter(request: proto::WatchTasksRequest) -> Result<TaskFilter, Error> {
    Ok(task_filter!(request))
}

impl GrpcApi {
    async fn edit_tags(
        &self,
        caller: Caller,
        task_id: &str,
        edit: TagEdit,
        tags: Vec<String>,
    ) -> TaskResult {
        reply(
            self.service
                .edit_task_tags(caller, task_id, edit, tags)
                .await,
        )
    }
}

type TaskResult = Result<Response<proto::Task>, Status>;

fn reply(task: Result<crate::domain::Task, Error>) -> TaskResult {
    Ok(Response::new(convert::task(task?)))
}

pub(super) fn time_range(
    from_name: &str,
    from: Option<prost_types::Timestamp>,
    to_name: &str,
    to: Option<prost_types::Timestamp>,
) -> Result<TimeRange, Error> {
    Ok(TimeRange {
        from: from
            .map(|at| convert::from_timestamp(from_name, at))
            .transpose()?,
        to: to
            .map(|at| convert::from_timestamp(to_name, at))
            .transpose()?,
    })
}

pub(super) fn list_query(request: proto::ListTasksRequest) -> Result<ListQuery, Error> {
    Ok(ListQuery {
        filter: task_filter!(request),
        limit: (request.limit != 0).then_some(i64::from(request.limit)),
        offset: match request.offset {
            0 => None,
            offset => Some(
                u64::try_from(offset)
                    .map_err(|_| Error::invalid("Parameter 'offset' must be 0 or more."))?,
            ),
        },
        next_token: non_empty(request.next_token),
        limited_response: request.limited_response,
    })
}

/// The gRPC request rebuilt into the REST body's shape, so one code path validates both.
pub(super) fn creation_fields(request: proto::CreateTaskRequest) -> Map<String, Value> {
    let mut fields = convert::object_or_empty(request.params);
    let mut set = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.insert(name.to_owned(), value);
        }
    };
    set("instruction", request.instruction.map(Value::String));
    set("callback_url", request.callback_url.map(Value::String));
    set(
        "metadata",
        request
            .metadata
            .map(|metadata| Value::Object(convert::struct_to_json(metadata))),
    );
    set("unique_id", request.unique_id.map(Value::String));
    set(
        "tags",
        (!request.tags.is_empty())
            .then(|| Value::Array(request.tags.into_iter().map(Value::String).collect())),
    );
    set("project", request.project.map(Value::String));
    set("batch", request.batch.map(Value::String));
    set(
        "clear_unique_id_on_error",
        request
            .clear_unique_id_on_error
            .then_some(Value::Bool(true)),
    );
    fields
}

#[tonic::async_trait]
impl TaskService for GrpcApi {
    type ImportTasksStream = super::bulk::ImportStream;
    type ExportTasksStream = super::bulk::ExportStream;
    type WatchTasksStream = WatchStream;

    async fn watch_tasks(
        &self,
        request: Request<proto::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let caller = self.caller(&request).await?;
        let filter = watch_filter(request.into_inner())?;
        let watch = self.service.watch_tasks(caller, filter).await?;
        Ok(Response::new(watch_stream(watch)))
    }

    async fn import_tasks(
        &self,
        request: Request<tonic::Streaming<proto::ImportTasksRequest>>,
    ) -> Result<Response<Self::ImportTasksStream>, Status> {
        self.import(request).await
    }

    async fn export_tasks(
        &self,
        request: Request<proto::ExportTasksRequest>,
    ) -> Result<Response<Self::ExportTasksStream>, Status> {
        self.export(request).await
    }

    async fn create_task(&self, request: Request<proto::CreateTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let idempotency_key = idempotency_key(&request)?;
        let request = request.into_inner();
        let task_type = request.r#type.clone();
        let created = self
            .service
            .create_task(
                caller,
                idempotency_key.as_deref(),
                &task_type,
                creation_fields(request),
            )
            .await?;
        match created.outcome {
            Ok(task) => {
                let mut response = Response::new(convert::task(task));
                if created.replayed {
                    mark_replayed(response.metadata_mut());
                }
                Ok(response)
            }
            Err(err) => {
                let mut status = Status::from(err);
                if created.replayed {
                    mark_replayed(status.metadata_mut());
                }
                Err(status)
            }
        }
    }

    async fn get_task(&self, request: Request<proto::GetTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        reply(
            self.service
                .get_task(caller, &request.into_inner().task_id)
                .await,
        )
    }

    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let caller = self.caller(&request).await?;
        let query = list_query(request.into_inner())?;
        let page = self.service.list_tasks(caller, query).await?;
        Ok(Response::new(convert::page(page)))
    }

    async fn cancel_task(&self, request: Request<proto::CancelTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        reply(
            self.service
                .cancel_task(caller, &request.task_id, request.clear_unique_id)
                .await,
        )
    }

    async fn set_task_metadata(
        &self,
        request: Request<proto::SetTaskMetadataRequest>,
    ) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let metadata = Value::Object(convert::object_or_empty(request.metadata));
        reply(
            self.service
                .set_task_metadata(caller, &request.task_id, metadata)
                .await,
        )
    }

    async fn update_task_unique_id(
        &self,
        request: Request<proto::UpdateTaskUniqueIdRequest>,
    ) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        reply(
            self.service
                .update_task_unique_id(caller, &request.task_id, request.unique_id)
                .await,
        )
    }

    async fn delete_task_unique_id(
        &self,
        request: Request<proto::DeleteTaskUniqueIdRequest>,
    ) -> TaskResult {
        let caller = self.caller(&request).await?;
        reply(
            self.service
                .delete_task_unique_id(caller, &request.into_inner().task_id)
                .await,
        )
    }

    async fn add_task_tags(&self, request: Request<proto::AddTaskTagsRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        self.edit_tags(caller, &request.task_id, TagEdit::Add, request.tags)
            .await
    }

    async fn set_task_tags(&self, request: Request<proto::SetTaskTagsRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        self.edit_tags(caller, &request.task_id, TagEdit::Replace, request.tags)
            .await
    }

    async fn delete_task_tags(&self, request: Request<proto::DeleteTaskTagsRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        self.edit_tags(caller, &request.task_id, TagEdit::Remove, request.tags)
            .await
    }

    async fn audit_task(&self, request: Request<proto::AuditTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        reply(
            self.service
                .audit_task(
                    caller,
                    &request.task_id,
                    request.accepted,
                    request.comments,
                    request.rework,
                )
                .await,
        )
    }
}
