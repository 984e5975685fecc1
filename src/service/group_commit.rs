//! Group commit for single creates: concurrent creates share one transaction, so one durable
//! commit (one fsync) acknowledges many tasks. Each create is still answered only after the
//! commit that holds it, and a unique_id conflict refuses only the task that has it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Mutex};

use super::callbacks::batch_delivery;
use crate::{
    config::CallbackSettings,
    error::{Error, Result},
    store::{NewTask, OnBatchCompleted, Store, StoredOutcome},
};

/// The most creates one transaction carries.
const MAX_GROUP: usize = 64;
/// Creates waiting for a committer; past this, callers wait to enqueue (back-pressure).
const QUEUE: usize = 1024;
/// The fewest creates a group starts with while another group is being written. On PostgreSQL
/// part of a group's cost does not depend on its size (starting the statement's plan was a fifth
/// of the database's CPU during creates): two committers splitting a trickle of creates into
/// small groups spent half as much again of the database's CPU per create as one committer did
/// (BENCHMARKS.md).
const MIN_OVERLAPPING_GROUP: usize = 16;

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
        let (writes, _) = watch::channel(Writes::default());
        let writes = Arc::new(writes);
        for _ in 0..committers.max(1) {
            tokio::spawn(commit_loop(
                store.clone(),
                callbacks.clone(),
                receiver.clone(),
                writes.clone(),
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

/// What the committers tell each other.
#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    /// Groups being written now.
    groups: usize,
    /// Groups that found the database unreachable, ever.
    unreachable: u64,
}

async fn commit_loop(
    store: Store,
    callbacks: Arc<CallbackSettings>,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    writes: Arc<watch::Sender<Writes>>,
) {
    let on_batch_completed = |batch: &crate::domain::Batch| batch_delivery(&callbacks, batch);
    loop {
        // While one committer waits on its commit, another gathers the next group.
        let Some(gathered) = gather(&receiver, &writes).await else {
            return;
        };
        if gathered.unreachable_meanwhile {
            // Never sent, so a retry is safe; sending it would wait out the acquire timeout
            // once more (see `fail_queued_creates`).
            for pending in gathered.group {
                let _ = pending.reply.send(Err(Error::Unavailable));
            }
            continue;
        }
        let _writing = WritingGroup::enter(&writes);
        let unreachable = settle(&store, &on_batch_completed, &receiver, gathered.group).await;
        // Counted before `_writing` ends this write, so a group waiting for that end sees it.
        if unreachable {
            writes.send_modify(|writes| writes.unreachable += 1);
        }
    }
}

/// One group being written, counted in [`Writes::groups`] until dropped (even by a panic).
struct WritingGroup<'a>(&'a watch::Sender<Writes>);

impl<'a> WritingGroup<'a> {
    fn enter(writes: &'a watch::Sender<Writes>) -> Self {
        writes.send_modify(|writes| writes.groups += 1);
        WritingGroup(writes)
    }
}

impl Drop for WritingGroup<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|writes| writes.groups -= 1);
    }
}

#[derive(Debug, PartialEq)]
struct Gathered<T> {
    group: Vec<T>,
    /// Another group found the database unreachable while this one waited for its write.
    unreachable_meanwhile: bool,
}

/// The next group: every create waiting, up to [`MAX_GROUP`]. While another group is being
/// written, a small one waits for more creates or for that write's end, whichever comes first,
/// so creates trickling in join one statement instead of paying for one each. `None` once the
/// queue is closed.
async fn gather<T>(
    receiver: &Mutex<mpsc::Receiver<T>>,
    writes: &watch::Sender<Writes>,
) -> Option<Gathered<T>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut group = vec![first];
    let mut others = writes.subscribe();
    let unreachable_before = others.borrow_and_update().unreachable;
    let gathered = |group| {
        Some(Gathered {
            group,
            unreachable_meanwhile: writes.borrow().unreachable != unreachable_before,
        })
    };
    loop {
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if group.len() >= MIN_OVERLAPPING_GROUP {
            return gathered(group);
        }
        tokio::select! {
            next = receiver.recv() => match next {
                Some(next) => group.push(next),
                None => return gathered(group),
            },
            // Checks the current count first, so a write that ended before this wait is seen.
            _ = others.wait_for(|writes| writes.groups == 0) => return gathered(group),
        }
    }
}

/// Writes one group and answers each of its creates; true if the database was unreachable.
async fn settle(
    store: &Store,
    on_batch_completed: OnBatchCompleted<'_>,
    receiver: &Mutex<mpsc::Receiver<Pending>>,
    group: Vec<Pending>,
) -> bool {
    let (items, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|pending| (pending.creation, pending.reply))
        .unzip();
    let started = std::time::Instant::now();
    let outcome = store.create_tasks(&items, on_batch_completed).await;
    metrics::histogram!("annotask_create_group_size").record(items.len() as f64);
    metrics::histogram!("annotask_create_group_write_seconds")
        .record(started.elapsed().as_secs_f64());
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
                    .create_tasks(std::slice::from_ref(&item), on_batch_completed)
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
        fail_queued_creates(receiver);
    }
    unreachable
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

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin, time::Duration};

    use super::*;

    fn gathered(group: Vec<usize>) -> Gathered<usize> {
        Gathered {
            group,
            unreachable_meanwhile: false,
        }
    }

    fn one_group_being_written() -> watch::Sender<Writes> {
        watch::channel(Writes {
            groups: 1,
            unreachable: 0,
        })
        .0
    }

    async fn still_waiting(gathering: Pin<&mut impl Future>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), gathering)
            .await
            .is_err()
    }

    async fn queued(items: usize) -> (mpsc::Sender<usize>, Mutex<mpsc::Receiver<usize>>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        for item in 0..items {
            sender.send(item).await.unwrap();
        }
        (sender, Mutex::new(receiver))
    }

    #[tokio::test]
    async fn with_no_group_being_written_a_group_starts_with_what_is_waiting() {
        let (_sender, receiver) = queued(3).await;
        let (writing, _) = watch::channel(Writes::default());
        assert_eq!(
            gather(&receiver, &writing).await,
            Some(gathered(vec![0, 1, 2]))
        );
    }

    #[tokio::test]
    async fn while_a_group_is_written_a_small_one_waits_for_that_write_to_end() {
        let (_sender, receiver) = queued(3).await;
        let writing = one_group_being_written();
        let gathering = gather(&receiver, &writing);
        tokio::pin!(gathering);
        assert!(
            still_waiting(gathering.as_mut()).await,
            "a group of 3 started beside another"
        );
        writing.send_modify(|writes| writes.groups -= 1);
        assert_eq!(gathering.await, Some(gathered(vec![0, 1, 2])));
    }

    #[tokio::test]
    async fn while_a_group_is_written_enough_creates_start_the_next() {
        let (sender, receiver) = queued(MIN_OVERLAPPING_GROUP - 1).await;
        let writing = one_group_being_written();
        let late = tokio::spawn(async move { sender.send(usize::MAX).await });
        let group = gather(&receiver, &writing).await.unwrap().group;
        assert_eq!(group.len(), MIN_OVERLAPPING_GROUP);
        assert_eq!(group.last(), Some(&usize::MAX));
        late.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_closed_queue_ends_gathering() {
        let (sender, receiver) = queued(2).await;
        let writing = one_group_being_written();
        drop(sender);
        assert_eq!(
            gather(&receiver, &writing).await,
            Some(gathered(vec![0, 1]))
        );
        assert_eq!(gather(&receiver, &writing).await, None);
    }

    #[tokio::test]
    async fn a_group_waiting_while_the_database_proved_unreachable_is_told_so() {
        let (_sender, receiver) = queued(3).await;
        let writing = one_group_being_written();
        let gathering = gather(&receiver, &writing);
        tokio::pin!(gathering);
        assert!(still_waiting(gathering.as_mut()).await);
        writing.send_modify(|writes| writes.unreachable += 1);
        writing.send_modify(|writes| writes.groups -= 1);
        let gathered = gathering.await.unwrap();
        assert!(gathered.unreachable_meanwhile);
        assert_eq!(gathered.group, vec![0, 1, 2]);
    }
}
