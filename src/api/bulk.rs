//! What the REST and gRPC bulk transfers share: replaying or running an import into a spool,
//! and starting an export. Each transport only decodes its items and encodes its answers.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::spool::{spool, SpoolReader, SpoolWriter};
use crate::{
    domain::{Caller, ListQuery, Task},
    error::{Error, Result},
    service::{ImportFingerprint, ImportItem, ImportLine, ImportSummary, Service, IMPORT_CHUNK},
};

/// How an import is answered.
pub enum ImportAnswer {
    /// The same import ran before under this Idempotency-Key: its summary, nothing created.
    Replayed(ImportSummary),
    /// The answers, as the import writes them (each chunk's once committed, then the last).
    Spooled(SpoolReader),
}

/// Replays an earlier import under `key` (reading the whole input to be sure it is the same),
/// or starts this one in the background: `write_lines` spools each committed chunk's answers,
/// and `last` encodes the final record (the summary, or the error that ended the import).
pub async fn import<S, W, L>(
    service: Arc<Service>,
    caller: Caller,
    key: Option<String>,
    items: S,
    mut write_lines: W,
    last: L,
) -> Result<ImportAnswer>
where
    S: Stream<Item = Result<ImportItem>> + Send + 'static,
    W: FnMut(&mut SpoolWriter, &[ImportLine]) -> Result<()> + Send + 'static,
    L: FnOnce(Result<ImportSummary>) -> Vec<u8> + Send + 'static,
{
    if let Some(key) = &key {
        if let Some(stored) = service.stored_import(caller, key).await? {
            let mut fingerprint = ImportFingerprint::default();
            let mut items = std::pin::pin!(items);
            while let Some(item) = items.next().await {
                fingerprint.add(&item?);
            }
            return Ok(ImportAnswer::Replayed(service.replay_import(
                caller,
                stored,
                fingerprint,
            )?));
        }
    }
    let (mut writer, reader) = spool().map_err(|err| {
        tracing::error!(error = %err, "creating an import spool failed");
        Error::Internal
    })?;
    // Reading and decoding the input runs ahead of the inserts, a bounded distance.
    let (sender, receiver) = mpsc::channel(IMPORT_CHUNK * 2);
    tokio::spawn(async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            if sender.send(item).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut emit = |lines: Vec<ImportLine>| write_lines(&mut writer, &lines);
        let outcome = service
            .import_tasks(
                caller,
                key.as_deref(),
                ReceiverStream::new(receiver),
                &mut emit,
            )
            .await;
        // Everything answered before is committed; a missing summary says the rest is not.
        let record = last(outcome);
        if let Err(err) = writer.push(&record).and_then(|()| writer.finish()) {
            tracing::warn!(error = %err, "finishing an import's answer failed");
        }
    });
    Ok(ImportAnswer::Spooled(reader))
}

/// A running export: its first task, the rest, and the error that may end it early.
pub struct Export {
    pub first: Task,
    pub rest: ReceiverStream<Task>,
    /// Resolves to the error that ended the export, if one did (checked once `rest` ends).
    pub failure: oneshot::Receiver<Error>,
}

/// Starts an export. A bad filter or token is this call's error (before anything streams);
/// `None` when nothing matches.
pub async fn export(
    service: Arc<Service>,
    caller: Caller,
    query: ListQuery,
) -> Result<Option<Export>> {
    let (sender, receiver) = mpsc::channel(256);
    let (failure_sender, mut failure) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(err) = service.export_tasks(caller, query, sender.clone()).await {
            // Sent before `sender` drops, so the reader finds it when the tasks end.
            let _ = failure_sender.send(err);
        }
        drop(sender);
    });
    let mut rest = ReceiverStream::new(receiver);
    match rest.next().await {
        Some(first) => Ok(Some(Export {
            first,
            rest,
            failure,
        })),
        None => match failure.try_recv() {
            Ok(err) => Err(err),
            Err(_) => Ok(None),
        },
    }
}
