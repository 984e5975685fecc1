//! Bulk import and export (SPEC §12): the same rules as one create or one list, many at once.

use std::collections::HashMap;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    auth::require_admin,
    idempotency::{count_refusal, count_replay, CanonicalMap, IMPORT_TASKS},
    projects::Placement,
    tasks::check_filter,
    Service,
};
use crate::{
    domain::{Caller, ListQuery, NewDelivery, PageToken, Scope, Task, TaskId, Timestamp},
    error::{Error, Result},
    store::{BulkInserted, IdempotencyRecord},
};

/// Lines committed per transaction: large enough to amortise the commit, small enough that a
/// crash loses little work and results stream back steadily.
pub const IMPORT_CHUNK: usize = 512;

/// The longest a chunk waits to fill up once its first line is in.
const IMPORT_CHUNK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Lines of one chunk that name the same type, project and batch share one look-up.
type PlacementKey = (String, Option<Value>, Option<Value>);

/// One chunk of input lines, checked and ready to write.
struct PreparedChunk {
    /// Each line's number and its place in `tasks`, or the error it answers.
    lines: Vec<(u64, Result<usize>)>,
    tasks: Vec<(Task, Option<NewDelivery>)>,
}

/// One input line of an import, as the transport read it.
pub struct ImportItem {
    /// Counts from 1.
    pub line: u64,
    /// The task type and the creation fields, or why the line could not be read.
    pub request: Result<(String, Map<String, Value>)>,
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportOutcome {
    Created {
        task_id: String,
    },
    /// Another task holds the line's unique_id (from an earlier import, or an earlier line).
    Duplicate {
        task_id: String,
    },
    /// What a single create would have answered.
    Error(Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportLine {
    pub line: u64,
    pub outcome: ImportOutcome,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub lines: u64,
    pub created: u64,
    pub duplicate: u64,
    pub error: u64,
}

impl ImportSummary {
    fn count(&mut self, outcome: &ImportOutcome) {
        self.lines += 1;
        match outcome {
            ImportOutcome::Created { .. } => self.created += 1,
            ImportOutcome::Duplicate { .. } => self.duplicate += 1,
            ImportOutcome::Error(_) => self.error += 1,
        }
    }
}

/// The identity of an import's content, for its `Idempotency-Key`: every line's type and
/// fields with keys sorted (or its read error), in order.
pub struct ImportFingerprint(Sha256);

impl Default for ImportFingerprint {
    fn default() -> Self {
        // Unlike any single create's fingerprint, so a key cannot cross between the two.
        ImportFingerprint(Sha256::new_with_prefix(b"POST /v1/tasks/import\n"))
    }
}

impl ImportFingerprint {
    pub fn add(&mut self, item: &ImportItem) {
        match &item.request {
            Ok((task_type, fields)) => {
                // `[TYPE,BODY]`, keys sorted, as compact JSON.
                if let Err(err) =
                    serde_json::to_writer(&mut self.0, &(task_type, CanonicalMap(fields)))
                {
                    tracing::error!(error = %err, "fingerprinting an import line failed");
                }
            }
            Err(err) => self.0.update(format!("error: {err}").as_bytes()),
        }
        self.0.update(b"\n");
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Counts an import's key refusal on `/metrics`, and passes the error on.
fn refused(err: Error) -> Error {
    count_refusal(IMPORT_TASKS, &err);
    err
}

/// An earlier import's record under an `Idempotency-Key`.
pub struct StoredImport(IdempotencyRecord);

impl Service {
    /// The record an earlier import left under `key`, if it has not expired. The transport
    /// then reads the request through an [`ImportFingerprint`] and calls [`Service::replay_import`].
    pub async fn stored_import(&self, caller: Caller, key: &str) -> Result<Option<StoredImport>> {
        require_admin(caller)?;
        self.check_idempotency_key(key)?;
        let record = self.store.find_idempotency_record(key).await?;
        Ok(record
            .filter(|record| record.expires_at > Timestamp::now())
            .map(StoredImport))
    }

    /// The summary of the earlier import, if this one is the same request by the same account.
    pub fn replay_import(
        &self,
        caller: Caller,
        stored: StoredImport,
        fingerprint: ImportFingerprint,
    ) -> Result<ImportSummary> {
        let record = stored.0;
        if record.scope != caller.scope {
            return Err(refused(Error::IdempotencyConflict(
                "This Idempotency-Key has already been used by another account or API key world."
                    .to_owned(),
            )));
        }
        if record.fingerprint != fingerprint.finish() {
            return Err(refused(Error::IdempotencyConflict(
                "This Idempotency-Key has already been used with a different import.".to_owned(),
            )));
        }
        let summary = serde_json::from_str(&record.outcome).map_err(|err| {
            tracing::error!(error = %err, "stored import summary is unreadable");
            Error::Internal
        })?;
        count_replay(IMPORT_TASKS);
        Ok(summary)
    }

    /// Creates a task for every valid item, [`IMPORT_CHUNK`] lines per transaction, and hands
    /// each chunk's outcomes to `emit` (in input order) only once its transaction has committed.
    /// A transient database failure ends the import with that error: every line reported so far
    /// is durable, and re-running the import creates only what is missing (for lines with a
    /// unique_id). With `idempotency_key`, the summary is stored for replays.
    pub async fn import_tasks(
        &self,
        caller: Caller,
        idempotency_key: Option<&str>,
        items: impl Stream<Item = Result<ImportItem>>,
        emit: &mut (dyn FnMut(Vec<ImportLine>) -> Result<()> + Send),
    ) -> Result<ImportSummary> {
        let scope = require_admin(caller)?;
        let _in_flight = match idempotency_key {
            Some(key) => {
                self.check_idempotency_key(key)?;
                Some(self.in_flight.claim(key).map_err(refused)?)
            }
            None => None,
        };
        let started = Timestamp::now();
        // Only a keyed import is ever compared with another.
        let mut fingerprint = idempotency_key.map(|_| ImportFingerprint::default());
        let mut summary = ImportSummary::default();
        // Full chunks while lines keep coming (tokio's cooperative budget would cut a chunk of
        // what happens to be ready at about 128), yet a slow sender's lines still commit soon.
        let mut chunks = std::pin::pin!(tokio_stream::StreamExt::chunks_timeout(
            items,
            IMPORT_CHUNK,
            IMPORT_CHUNK_WAIT
        ));
        let mut next = self
            .next_import_chunk(scope, &mut chunks, fingerprint.as_mut())
            .await?;
        while let Some(chunk) = next {
            // One chunk is written while the next is read and checked, so the database and the
            // server work side by side. The next is written only after this one has committed,
            // so a unique_id repeated across the two is still answered as a duplicate.
            let following = self.next_import_chunk(scope, &mut chunks, fingerprint.as_mut());
            tokio::pin!(following);
            let mut read_ahead = None;
            let insert = self.insert_import_chunk(&chunk.tasks);
            tokio::pin!(insert);
            // This chunk is answered as soon as it commits, not once the next has come in.
            let inserted = loop {
                tokio::select! {
                    inserted = &mut insert => break inserted?,
                    prepared = &mut following, if read_ahead.is_none() => {
                        read_ahead = Some(prepared);
                    }
                }
            };
            let mut answers = Vec::with_capacity(chunk.lines.len());
            for (line, placed) in chunk.lines {
                let outcome = match placed {
                    Err(err) => ImportOutcome::Error(err),
                    Ok(index) => match inserted.get(index) {
                        Some(BulkInserted::Created) => ImportOutcome::Created {
                            task_id: chunk.tasks[index].0.id.to_string(),
                        },
                        Some(BulkInserted::Duplicate { holder }) => ImportOutcome::Duplicate {
                            task_id: holder.clone(),
                        },
                        None => return Err(Error::Internal),
                    },
                };
                summary.count(&outcome);
                answers.push(ImportLine { line, outcome });
            }
            // Reported before the next chunk's failure (if any) ends the import: it committed.
            emit(answers)?;
            next = match read_ahead {
                Some(prepared) => prepared?,
                None => following.await?,
            };
        }
        if let (Some(key), Some(fingerprint)) = (idempotency_key, fingerprint) {
            let stored = serde_json::to_string(&summary).map_err(|err| {
                tracing::error!(error = %err, "serialising an import summary failed");
                Error::Internal
            })?;
            let record = IdempotencyRecord {
                scope,
                fingerprint: fingerprint.finish(),
                outcome: stored,
                created_at: started,
                expires_at: self.idempotency_expiry(started),
            };
            self.store.save_idempotency_record(key, &record).await?;
        }
        tracing::info!(
            lines = summary.lines,
            created = summary.created,
            duplicate = summary.duplicate,
            error = summary.error,
            "import finished"
        );
        Ok(summary)
    }

    /// The next chunk of input lines, each checked as a single create would be; `None` at the
    /// end of the input. Fails if the input broke off (the client went away) or a line could
    /// not be checked for a reason that is not the line's fault.
    async fn next_import_chunk(
        &self,
        scope: Scope,
        chunks: &mut (impl Stream<Item = Vec<Result<ImportItem>>> + Unpin),
        mut fingerprint: Option<&mut ImportFingerprint>,
    ) -> Result<Option<PreparedChunk>> {
        let Some(chunk) = chunks.next().await else {
            return Ok(None);
        };
        let mut placements = HashMap::new();
        let mut prepared = PreparedChunk {
            lines: Vec::with_capacity(chunk.len()),
            tasks: Vec::with_capacity(chunk.len()),
        };
        for (position, item) in chunk.into_iter().enumerate() {
            // This runs beside the previous chunk's insert, in the same task: let that one
            // move on between statements instead of waiting for the whole chunk to be checked.
            if position % 50 == 49 {
                tokio::task::yield_now().await;
            }
            // The input broke off (the client went away): what was committed stays, and no
            // summary is stored under the key, so the full import can be retried.
            let item = item?;
            if let Some(fingerprint) = fingerprint.as_deref_mut() {
                fingerprint.add(&item);
            }
            let outcome = match item.request {
                Err(err) => Err(err),
                Ok((task_type, fields)) => {
                    self.prepare_import_item(scope, &mut placements, &task_type, fields)
                        .await
                }
            };
            match outcome {
                Ok(ready) => {
                    prepared.lines.push((item.line, Ok(prepared.tasks.len())));
                    prepared.tasks.push(ready);
                }
                // Not the line's fault: end the import, as a single create would fail.
                Err(err @ (Error::Internal | Error::Unavailable)) => return Err(err),
                Err(err) => prepared.lines.push((item.line, Err(err))),
            }
        }
        Ok(Some(prepared))
    }

    /// Writes one chunk's tasks in one transaction.
    async fn insert_import_chunk(
        &self,
        tasks: &[(Task, Option<NewDelivery>)],
    ) -> Result<Vec<BulkInserted>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let inserted = self
            .store
            .insert_tasks(tasks, &|batch| self.batch_callback_due(batch))
            .await?;
        if tasks.iter().any(|(_, callback)| callback.is_some()) {
            self.deliveries_waiting.notify_one();
        }
        Ok(inserted)
    }

    /// The same checks as a single create; project and batch look-ups are shared by the lines
    /// of one chunk.
    async fn prepare_import_item(
        &self,
        scope: Scope,
        placements: &mut HashMap<PlacementKey, Result<Placement>>,
        task_type: &str,
        mut fields: Map<String, Value>,
    ) -> Result<(Task, Option<NewDelivery>)> {
        let key = (
            task_type.to_owned(),
            fields.get("project").cloned(),
            fields.get("batch").cloned(),
        );
        if !placements.contains_key(&key) {
            let placement = self.placement(scope, task_type, &fields).await;
            placements.insert(key.clone(), placement);
        }
        let placement = placements
            .get(&key)
            .cloned()
            .unwrap_or(Err(Error::Internal))?;
        let version = placement.inherit(&mut fields);
        let mut task = self.prepare_task(scope, task_type, fields)?;
        task.project_param_version = version;
        let callback = self.callback_due(None, &task);
        Ok((task, callback))
    }

    /// Sends every task matching `filter` to `out`, newest first, from one snapshot; stops
    /// quietly when `out` is closed (the client went away).
    pub async fn export_tasks(
        &self,
        caller: Caller,
        query: ListQuery,
        out: mpsc::Sender<Task>,
    ) -> Result<()> {
        let scope = caller.scope;
        check_filter(&query.filter, self.limits.max_filter_values)?;
        if query.offset.is_some() {
            return Err(Error::invalid(
                "Parameter 'offset' is not supported by exports: resume with 'next_token'.",
            ));
        }
        // Resuming: a list token, or the id of the last task the client received.
        let after = match query.next_token.as_deref() {
            None => None,
            Some(token) => Some(match TaskId::parse(token) {
                Some(id) => {
                    let task = self.store.get_task(scope, &id).await?.ok_or_else(|| {
                        Error::invalid("Parameter 'next_token' names no task of yours.")
                    })?;
                    PageToken {
                        created_at: task.created_at,
                        task_id: task.id,
                    }
                }
                None => PageToken::decode(token).ok_or_else(|| {
                    Error::invalid("Parameter 'next_token' is not a valid page token.")
                })?,
            }),
        };
        self.store
            .export_tasks(scope, &query.filter, after, &out)
            .await
    }
}
