//! `TaskService.ImportTasks` and `ExportTasks` (SPEC §12): the streams around the service's
//! bulk operations. The trait methods in `tasks.rs` call these.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert,
    error::grpc_code,
    idempotency_key, mark_replayed,
    tasks::{creation_fields, list_query},
    GrpcApi,
};
use crate::{
    api::{
        bulk::{self, Export, ImportAnswer},
        grpc::proto,
        spool::{SpoolReader, SpoolWriter},
    },
    error::{Error, Result},
    service::{ImportItem, ImportLine, ImportOutcome, ImportSummary},
};

pub type ImportStream =
    Pin<Box<dyn Stream<Item = Result<proto::ImportTasksResponse, Status>> + Send>>;
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<proto::Task, Status>> + Send>>;

/// Spool record kinds: an answer message, or the error that ended the import.
const ANSWER: u8 = 0;
const FAILURE: u8 = 1;

impl GrpcApi {
    pub(super) async fn import(
        &self,
        request: Request<Streaming<proto::ImportTasksRequest>>,
    ) -> Result<Response<ImportStream>, Status> {
        let caller = self.caller(&request).await?;
        let idempotency_key = idempotency_key(&request)?;
        let items = import_items(request.into_inner());
        let last = |outcome: Result<ImportSummary>| match outcome {
            Ok(summary) => record(ANSWER, &summary_message(&summary).encode_to_vec()),
            Err(err) => serde_json::to_vec(&err)
                .map(|json| record(FAILURE, &json))
                .unwrap_or_else(|_| vec![FAILURE]),
        };
        let answer = bulk::import(
            self.service.clone(),
            caller,
            idempotency_key,
            items,
            write_lines,
            last,
        )
        .await?;
        match answer {
            ImportAnswer::Replayed(summary) => {
                let answer = Ok(summary_message(&summary));
                let mut response =
                    Response::new(Box::pin(futures_util::stream::iter([answer])) as ImportStream);
                mark_replayed(response.metadata_mut());
                Ok(response)
            }
            ImportAnswer::Spooled(reader) => Ok(Response::new(Box::pin(spooled_answers(reader)))),
        }
    }

    pub(super) async fn export(
        &self,
        request: Request<proto::ExportTasksRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let query = list_query(proto::ListTasksRequest {
            next_token: request.next_token,
            start_time: request.start_time,
            end_time: request.end_time,
            completed_after: request.completed_after,
            completed_before: request.completed_before,
            updated_after: request.updated_after,
            updated_before: request.updated_before,
            status: request.status,
            r#type: request.r#type,
            project: request.project,
            batch: request.batch,
            unique_id: request.unique_id,
            tags: request.tags,
            customer_review_status: request.customer_review_status,
            ..Default::default()
        })?;
        let Some(Export {
            first,
            rest: tasks,
            failure: error,
        }) = bulk::export(self.service.clone(), caller, query).await?
        else {
            return Ok(Response::new(Box::pin(futures_util::stream::empty())));
        };
        let tasks = futures_util::stream::iter([first])
            .chain(tasks)
            .map(|task| Ok(convert::task(task)));
        let failure = futures_util::stream::once(async move { error.await.ok() })
            .filter_map(|err| std::future::ready(err.map(|err| Err(Status::from(err)))));
        Ok(Response::new(Box::pin(tasks.chain(failure))))
    }
}

/// The request stream as import items, numbered from 1.
fn import_items(
    requests: Streaming<proto::ImportTasksRequest>,
) -> impl Stream<Item = Result<ImportItem>> {
    requests
        .enumerate()
        .map(|(index, request)| {
            let line = index as u64 + 1;
            match request {
                Ok(proto::ImportTasksRequest { task: Some(task) }) => Ok(ImportItem {
                    line,
                    request: Ok((task.r#type.clone(), creation_fields(task))),
                }),
                Ok(proto::ImportTasksRequest { task: None }) => Ok(ImportItem {
                    line,
                    request: Err(Error::invalid("Missing required field: 'task'.")),
                }),
                Err(status) => {
                    tracing::info!(code = ?status.code(), "an import's request stream broke off");
                    Err(Error::invalid(format!(
                        "The request stream broke off: {}",
                        status.message()
                    )))
                }
            }
        })
        // A broken stream ends the import; nothing after it is read.
        .scan(false, |broken, item| {
            let ended = *broken;
            *broken = item.is_err();
            std::future::ready((!ended).then_some(item))
        })
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(payload.len() + 1);
    record.push(kind);
    record.extend_from_slice(payload);
    record
}

fn write_lines(writer: &mut SpoolWriter, lines: &[ImportLine]) -> Result<()> {
    let spool_failed = |err: std::io::Error| {
        tracing::error!(error = %err, "writing an import's answer failed");
        Error::Internal
    };
    for line in lines {
        let mut answer = proto::ImportLineResult {
            line: i64::try_from(line.line).unwrap_or(i64::MAX),
            ..Default::default()
        };
        match &line.outcome {
            ImportOutcome::Created { task_id } => {
                answer.set_result(proto::ImportResult::Created);
                answer.task_id = task_id.clone();
            }
            ImportOutcome::Duplicate { task_id } => {
                answer.set_result(proto::ImportResult::Duplicate);
                answer.task_id = task_id.clone();
            }
            ImportOutcome::Error(err) => {
                answer.set_result(proto::ImportResult::Error);
                answer.code = i32::from(grpc_code(err));
                answer.error = err.to_string();
            }
        }
        let message = proto::ImportTasksResponse {
            answer: Some(proto::import_tasks_response::Answer::Line(answer)),
        };
        writer
            .push(&record(ANSWER, &message.encode_to_vec()))
            .map_err(spool_failed)?;
    }
    writer.checkpoint().map_err(spool_failed)
}

fn summary_message(summary: &ImportSummary) -> proto::ImportTasksResponse {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    proto::ImportTasksResponse {
        answer: Some(proto::import_tasks_response::Answer::Summary(
            proto::ImportSummary {
                lines: count(summary.lines),
                created: count(summary.created),
                duplicate: count(summary.duplicate),
                error: count(summary.error),
            },
        )),
    }
}

fn spooled_answers(
    reader: SpoolReader,
) -> impl Stream<Item = Result<proto::ImportTasksResponse, Status>> + Send {
    futures_util::stream::unfold(reader, |mut reader| async move {
        let batch = reader.next_records().await?;
        let answers: Vec<_> = match batch {
            Err(err) => {
                tracing::error!(error = %err, "reading an import's answer failed");
                vec![Err(Status::from(Error::Internal))]
            }
            Ok(records) => records.iter().map(|record| decode(record)).collect(),
        };
        Some((futures_util::stream::iter(answers), reader))
    })
    .flatten()
}

fn decode(record: &[u8]) -> Result<proto::ImportTasksResponse, Status> {
    match record.split_first() {
        Some((&ANSWER, message)) => proto::ImportTasksResponse::decode(message).map_err(|err| {
            tracing::error!(error = %err, "an import's spooled answer is unreadable");
            Status::from(Error::Internal)
        }),
        Some((&FAILURE, json)) => Err(serde_json::from_slice::<Error>(json)
            .unwrap_or(Error::Internal)
            .into()),
        _ => Err(Status::from(Error::Internal)),
    }
}
