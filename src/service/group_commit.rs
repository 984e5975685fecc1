//! Group commit for single creates: concurrent creates share one transaction, so one durable
//! commit (one fsync) acknowledges many tasks. Each create is still answered only after the
//! commit that holds it, and a unique_id conflict refuses only the task that has it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::callbacks::batch_delivery;
use crate::{
    config::CallbackSettings,
    error::{Error, Result},
    store::{NewTask, Store, StoredOutcome},
};

/// The most creates one transaction carries.
const MAX_GROUP: usize = 64;
/// Creates waiting for a committer; past this, callers wait to enqueue (back-pressure).
const QUEUE: usize = 1024;

struct Pending {
    creation: NewTask,
    reply: oneshot::Sender<Result<StoredOutcome>>,
}

pub(super) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts `committers` loops (one for SQLite, whose writes are serial anyway; a few for
    /// PostgreSQL, which commits transactions in parallel). They end when `self` is dropped.
    pub(super) fn start(store: Store, callbacks: CallbackSettings, committers: usize) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let callbacks = Arc::new(callbacks);
        for _ in 0..committers.max(1) {
            tokio::spawn(commit_loop(
                store.clone(),
                callbacks.clone(),
                receiver.clone(),
            ));
        }
        GroupCommit { queue }
    }

    /// Creates the task (or stores the answer under its Idempotency-Key) in the next group;
    /// resolves once that group's transaction has committed.
    pub(super) async fn create(&self, creation: NewTask) -> Result<StoredOutcome> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { creation, reply };
        if self.queue.send(pending).await.is_err() {
            tracing::error!("the group committer has stopped");
            return Err(Error::Unavailable);
        }
        // A committer gone mid-group (shutdown) leaves the outcome unknown: the client must
        // retry (with a unique_id or Idempotency-Key to be safe).
        answer.await.unwrap_or(Err(Error::Unavailable))
    }
}

async fn commit_loop(
    store: Store,
    callbacks: Arc<CallbackSettings>,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
) {
    let on_batch_completed = |batch: &crate::domain::Batch| batch_delivery(&callbacks, batch);
    loop {
        // While one committer waits on its commit, another gathers the next group.
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        let (items, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|pending| (pending.creation, pending.reply))
            .unzip();
        let outcome = store.create_tasks(&items, &on_batch_completed).await;
        let unreachable = matches!(outcome, Err(Error::Unavailable));
        match outcome {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            // One transaction failed for all: try each alone, so one create's failure (or a
            // deadlock between groups) is not every create's failure. Not when the database is
            // unreachable: each retry would wait out the acquire timeout again, the last create
            // of a group of N answering after N + 1 of them instead of failing fast.
            Err(err) if items.len() > 1 && err != Error::Unavailable => {
                tracing::warn!(error = %err, size = items.len(), "a create group failed; retrying one by one");
                for (item, reply) in items.into_iter().zip(replies) {
                    let outcome = store
                        .create_tasks(std::slice::from_ref(&item), &on_batch_completed)
                        .await
                        .and_then(|mut outcomes| outcomes.pop().unwrap_or(Err(Error::Internal)));
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        if unreachable {
            fail_queued_creates(&receiver);
        }
    }
}

/// The database just proved unreachable: creates queued meanwhile are answered 503 at once
/// rather than each group waiting out the acquire timeout in turn behind the last (a request
/// would wait one timeout per group ahead of it). They never reached the database, so a retry
/// is safe. If another committer holds the queue, it is gathering a group that will fail fast
/// on its own.
fn fail_queued_creates(receiver: &Mutex<mpsc::Receiver<Pending>>) {
    let Ok(mut receiver) = receiver.try_lock() else {
        return;
    };
    while let Ok(pending) = receiver.try_recv() {
        let _ = pending.reply.send(Err(Error::Unavailable));
    }
}
