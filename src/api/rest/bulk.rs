//! Bulk import and export over NDJSON (SPEC §12): `/v1/tasks/import`, `/v1/tasks/export`.

use axum::{
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    error::http_status,
    extract::{Auth, IdempotencyKey},
    json, schema,
    tasks::parse_list_query,
    AppState,
};
use crate::{
    api::{
        bulk::{self, Export, ImportAnswer},
        spool::{SpoolReader, SpoolWriter},
    },
    error::{Error, Result},
    service::{ImportItem, ImportLine, ImportOutcome, ImportSummary},
};

const NDJSON: &str = "application/x-ndjson";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_tasks))
        .routes(routes!(export_tasks))
}

/// Create many tasks from NDJSON, one task per line (SPEC §12). The answer streams one line
/// per input line, then a summary line.
#[utoipa::path(
    post,
    path = "/tasks/import",
    tag = "bulk",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the summary of a finished import with this key.")),
    request_body(content = schema::ImportTask, content_type = "application/x-ndjson",
        description = "One JSON object per line: the body of `POST /task/{type}` plus `type`."),
    responses(
        (status = 200, description = "NDJSON: one `ImportLine` per input line, then `{\"summary\": …}`.",
            body = schema::ImportAnswerLine, content_type = "application/x-ndjson"),
        (status = 400, description = "The body could not be read.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for another import.", body = schema::ErrorBody),
        (status = 429, description = "An import with this Idempotency-Key is still running.", body = schema::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds."))),
    ),
)]
async fn import_tasks(
    State(service): State<AppState>,
    Auth(caller): Auth,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    body: Body,
) -> Result<Response> {
    let max_line = service.limits().max_body_bytes;
    let items = ndjson_items(body, max_line);
    let last = |outcome: Result<ImportSummary>| match outcome {
        Ok(summary) => summary_line(&summary).into_bytes(),
        Err(err) => (error_json(&err).to_string() + "\n").into_bytes(),
    };
    match bulk::import(service, caller, idempotency_key, items, write_lines, last).await? {
        ImportAnswer::Replayed(summary) => {
            let mut response = ndjson_response(Body::from(summary_line(&summary)));
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        ImportAnswer::Spooled(reader) => Ok(ndjson_response(spooled_body(reader))),
    }
}

/// The upload as import items: one per non-blank line, numbered from 1. A line that is not a
/// JSON object with a `type` is an error item; a broken upload ends with an error.
fn ndjson_items(body: Body, max_line: usize) -> impl Stream<Item = Result<ImportItem>> {
    let lines = LineSplitter::lines(body.into_data_stream(), max_line);
    lines.filter_map(move |line| async move {
        match line {
            Err(err) => Some(Err(err)),
            Ok(Line::Blank) => None,
            Ok(Line::TooLong { number }) => Some(Ok(ImportItem {
                line: number,
                request: Err(Error::PayloadTooLarge(format!(
                    "The line is longer than the {max_line}-byte limit for one task."
                ))),
            })),
            Ok(Line::Text { number, bytes }) => Some(Ok(ImportItem {
                line: number,
                request: parse_line(&bytes),
            })),
        }
    })
}

fn parse_line(bytes: &[u8]) -> Result<(String, Map<String, Value>)> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| Error::invalid(format!("The line is not valid JSON: {err}.")))?;
    let Value::Object(mut fields) = value else {
        return Err(Error::invalid("The line must be a JSON object."));
    };
    match fields.remove("type") {
        Some(Value::String(task_type)) => Ok((task_type, fields)),
        Some(_) => Err(Error::invalid("Parameter 'type' must be a string.")),
        None => Err(Error::invalid("Missing required parameter: 'type'.")),
    }
}

enum Line {
    Blank,
    TooLong { number: u64 },
    Text { number: u64, bytes: Vec<u8> },
}

/// Splits a byte stream into lines without ever holding more than one line (bounded by
/// `max_line`) plus one received chunk.
struct LineSplitter<S> {
    chunks: S,
    max_line: usize,
    current: Vec<u8>,
    /// The current line passed `max_line`: its bytes are dropped until its end.
    overflowed: bool,
    number: u64,
    pending: std::collections::VecDeque<Line>,
    done: bool,
}

impl<S> LineSplitter<S>
where
    S: Stream<Item = std::result::Result<Bytes, axum::Error>> + Unpin,
{
    fn lines(chunks: S, max_line: usize) -> impl Stream<Item = Result<Line>> {
        let splitter = LineSplitter {
            chunks,
            max_line,
            current: Vec::new(),
            overflowed: false,
            number: 0,
            pending: Default::default(),
            done: false,
        };
        futures_util::stream::unfold(splitter, |mut splitter| async move {
            let line = splitter.next_line().await?;
            Some((line, splitter))
        })
    }

    async fn next_line(&mut self) -> Option<Result<Line>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.done {
                return None;
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => self.split(&chunk),
                Some(Err(err)) => {
                    self.done = true;
                    tracing::info!(error = %err, "an import's upload broke off");
                    return Some(Err(Error::invalid(
                        "The request body could not be read to its end.",
                    )));
                }
                None => {
                    self.done = true;
                    if !self.current.is_empty() || self.overflowed {
                        self.end_line();
                    }
                }
            }
        }
    }

    fn split(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&byte| byte == b'\n') {
            self.take(&chunk[..end]);
            self.end_line();
            chunk = &chunk[end + 1..];
        }
        self.take(chunk);
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.current.len() + bytes.len() > self.max_line {
            self.overflowed = true;
            self.current = Vec::new();
        } else {
            self.current.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self) {
        self.number += 1;
        let number = self.number;
        let line = if std::mem::take(&mut self.overflowed) {
            Line::TooLong { number }
        } else {
            let bytes = std::mem::take(&mut self.current);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                Line::Blank
            } else {
                Line::Text { number, bytes }
            }
        };
        self.pending.push_back(line);
    }
}

fn write_lines(writer: &mut SpoolWriter, lines: &[ImportLine]) -> Result<()> {
    let spool_failed = |err: std::io::Error| {
        tracing::error!(error = %err, "writing an import's answer failed");
        Error::Internal
    };
    for line in lines {
        let value = match &line.outcome {
            ImportOutcome::Created { task_id } => {
                json!({"line": line.line, "result": "created", "task_id": task_id})
            }
            ImportOutcome::Duplicate { task_id } => {
                json!({"line": line.line, "result": "duplicate", "task_id": task_id})
            }
            ImportOutcome::Error(err) => json!({
                "line": line.line,
                "result": "error",
                "status_code": http_status(err).as_u16(),
                "error": err.to_string(),
            }),
        };
        let mut text = value.to_string();
        text.push('\n');
        writer.push(text.as_bytes()).map_err(spool_failed)?;
    }
    writer.checkpoint().map_err(spool_failed)
}

fn summary_line(summary: &ImportSummary) -> String {
    json!({"summary": {
        "lines": summary.lines,
        "created": summary.created,
        "duplicate": summary.duplicate,
        "error": summary.error,
    }})
    .to_string()
        + "\n"
}

fn error_json(err: &Error) -> Value {
    json!({"status_code": http_status(err).as_u16(), "error": err.to_string()})
}

fn spooled_body(reader: SpoolReader) -> Body {
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let records = reader.next_records().await?;
        let chunk = records.map(|records| Bytes::from(records.concat()));
        Some((chunk, reader))
    });
    Body::from_stream(stream)
}

fn ndjson_response(body: Body) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// Every matching task as NDJSON, newest first, from one snapshot. Takes the filters of
/// `GET /tasks`; `next_token` resumes after the last line.
#[utoipa::path(
    get,
    path = "/tasks/export",
    tag = "bulk",
    params(schema::ListTasksQuery),
    responses(
        (status = 200, description = "NDJSON: one task per line (a failure mid-stream ends it with an error line).",
            body = schema::Task, content_type = "application/x-ndjson"),
        (status = 400, description = "An invalid value of a known parameter.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
    ),
)]
async fn export_tasks(
    State(service): State<AppState>,
    Auth(caller): Auth,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query = parse_list_query(query.as_deref().unwrap_or(""))?;
    let Some(Export {
        first,
        rest: tasks,
        failure: error,
    }) = bulk::export(service, caller, query).await?
    else {
        return Ok(ndjson_response(Body::empty()));
    };
    let lines = futures_util::stream::iter([first])
        .chain(tasks)
        .map(|task| {
            let mut line = serde_json::to_vec(&json::TaskJson(&task)).unwrap_or_else(|err| {
                tracing::error!(error = %err, "an exported task could not be rendered");
                b"{}".to_vec()
            });
            line.push(b'\n');
            line
        });
    // A failure after the first line can only end the stream: it ends with an error line.
    let failure = futures_util::stream::once(async move { error.await.ok() }).filter_map(|err| {
        std::future::ready(err.map(|err| (error_json(&err).to_string() + "\n").into_bytes()))
    });
    let body = lines
        .chain(failure)
        .map(|text| Ok::<_, std::convert::Infallible>(Bytes::from(text)));
    Ok(ndjson_response(Body::from_stream(body)))
}
