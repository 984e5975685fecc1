//! Live updates (SPEC §13): one feed per process fans every committed task change out to its
//! watchers. The feed hears the store's change notices (on PostgreSQL, one reader of the
//! change log per process, whatever the number of watchers), reads the changed tasks once per notice, and
//! broadcasts them over a bounded channel; each watcher keeps only its own account's world and
//! the tasks its filters match. A watcher that falls more than the buffer behind is ended, so a
//! slow client never grows the server's memory.
//!
//! An event carries the task as read after its commit: under rapid changes it may already
//! show a later state, but a task's events still come in commit order.

use std::{collections::HashSet, sync::Arc};

use tokio::sync::{broadcast, watch, Mutex};

use super::{tasks::check_filter, Service};
use crate::{
    domain::{Caller, Scope, Task, TaskFilter, TimeRange, Timestamp},
    error::Result,
    store::{ChangeKind, ChangeNotice, ChangeSubscription, Store, TaskChange},
};

/// One committed change, with the task as read after it.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub task: Task,
    pub kind: ChangeKind,
}

/// Why a watch ended (the transport maps each to its status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The watcher did not keep up: more than the buffer of events waited for it.
    FellBehind { missed: u64 },
    /// The feed lost changes (its database connection dropped): re-list, then watch again.
    Interrupted,
    /// The server is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for WatchEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchEnd::FellBehind { missed } => write!(
                f,
                "The watcher fell behind: {missed} task events were dropped because it did not read them fast enough. List the tasks again, then watch again."
            ),
            WatchEnd::Interrupted => f.write_str(
                "The task change feed was interrupted and changes may have been missed. List the tasks again, then watch again.",
            ),
            WatchEnd::ShuttingDown => f.write_str("The server is shutting down; watch again."),
        }
    }
}

#[derive(Clone)]
enum FeedItem {
    Event(Arc<TaskEvent>),
    End(WatchEnd),
}

pub(super) struct ChangeFeed {
    store: Store,
    capacity: usize,
    /// The running feed's sender; `None` until the first watcher (and after the feed ended).
    running: Arc<Mutex<Option<broadcast::Sender<FeedItem>>>>,
    stop: watch::Sender<bool>,
}

impl ChangeFeed {
    pub(super) fn new(store: Store, capacity: usize) -> Self {
        ChangeFeed {
            store,
            capacity: capacity.max(1),
            running: Arc::new(Mutex::new(None)),
            stop: watch::channel(false).0,
        }
    }

    /// Subscribes, starting the feed if it is not running: once this returns, every change
    /// committed afterwards reaches the receiver.
    async fn subscribe(&self) -> Result<broadcast::Receiver<FeedItem>> {
        let mut running = self.running.lock().await;
        if let Some(sender) = running.as_ref() {
            return Ok(sender.subscribe());
        }
        if *self.stop.borrow() {
            return Err(crate::error::Error::Unavailable);
        }
        let subscription = self.store.subscribe_changes().await?;
        let (sender, receiver) = broadcast::channel(self.capacity);
        *running = Some(sender.clone());
        tokio::spawn(run_feed(
            self.store.clone(),
            subscription,
            sender,
            self.running.clone(),
            self.stop.subscribe(),
        ));
        Ok(receiver)
    }

    /// Ends every watcher and the feed (at shutdown, before in-flight requests are awaited).
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

async fn run_feed(
    store: Store,
    mut subscription: ChangeSubscription,
    sender: broadcast::Sender<FeedItem>,
    running: Arc<Mutex<Option<broadcast::Sender<FeedItem>>>>,
    mut stop: watch::Receiver<bool>,
) {
    let end = loop {
        let notice = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break WatchEnd::ShuttingDown,
            notice = subscription.next() => notice,
        };
        match notice {
            Ok(ChangeNotice::Changes(changes)) => {
                if publish(&store, &sender, changes).await.is_err() {
                    break WatchEnd::Interrupted;
                }
            }
            // Watchers cannot know what they missed: they end, and re-list.
            Ok(ChangeNotice::Missed) => {
                let _ = sender.send(FeedItem::End(WatchEnd::Interrupted));
            }
            Err(_) => break WatchEnd::Interrupted,
        }
    };
    // The next watcher starts a new feed (unless the server is stopping).
    *running.lock().await = None;
    let _ = sender.send(FeedItem::End(end));
}

/// Reads the changed tasks in one go and sends their events in commit order.
async fn publish(
    store: &Store,
    sender: &broadcast::Sender<FeedItem>,
    changes: Vec<TaskChange>,
) -> Result<()> {
    if sender.receiver_count() == 0 {
        return Ok(());
    }
    let mut seen = HashSet::new();
    let ids: Vec<String> = changes
        .iter()
        .filter(|change| seen.insert(change.task_id.as_str()))
        .map(|change| change.task_id.clone())
        .collect();
    let tasks = store.tasks_by_ids(&ids).await.inspect_err(|err| {
        tracing::warn!(error = %err, "reading changed tasks for the watchers failed");
    })?;
    let tasks: std::collections::HashMap<&str, &Task> =
        tasks.iter().map(|task| (task.id.as_str(), task)).collect();
    for change in &changes {
        if let Some(task) = tasks.get(change.task_id.as_str()) {
            let event = TaskEvent {
                task: (*task).clone(),
                kind: change.kind,
            };
            let _ = sender.send(FeedItem::Event(Arc::new(event)));
        }
    }
    Ok(())
}

/// One watcher: its scope, its filters and its place in the feed.
pub struct TaskWatch {
    scope: Scope,
    filter: TaskFilter,
    receiver: broadcast::Receiver<FeedItem>,
}

impl TaskWatch {
    /// The next event this watcher may see, or why the watch ended.
    pub async fn next(&mut self) -> Result<TaskEvent, WatchEnd> {
        loop {
            match self.receiver.recv().await {
                Ok(FeedItem::Event(event)) => {
                    if event.task.scope == self.scope && matches(&self.filter, &event.task) {
                        return Ok(event.as_ref().clone());
                    }
                }
                Ok(FeedItem::End(end)) => return Err(end),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(WatchEnd::FellBehind { missed })
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::ShuttingDown),
            }
        }
    }
}

impl Service {
    /// Watches the caller's tasks (its account, in its key's world) that match the list's
    /// filters. Any key that may read tasks may watch them, worker keys too.
    pub async fn watch_tasks(&self, caller: Caller, filter: TaskFilter) -> Result<TaskWatch> {
        check_filter(&filter, self.limits.max_filter_values)?;
        let receiver = self.change_feed.subscribe().await?;
        Ok(TaskWatch {
            scope: caller.scope,
            filter,
            receiver,
        })
    }

    /// Deletes change-log rows past their retention (PostgreSQL; nothing on SQLite).
    pub async fn prune_change_log(&self) -> Result<u64> {
        self.store.prune_change_log().await
    }

    /// Ends every watch (at shutdown): otherwise they would hold the server open.
    pub fn stop_watchers(&self) {
        self.change_feed.stop();
    }
}

/// Whether `task` matches the list's filters (SPEC §6), as the list query decides it.
pub(super) fn matches(filter: &TaskFilter, task: &Task) -> bool {
    let in_range = |range: &TimeRange, at: Option<Timestamp>| {
        range.is_open()
            || at.is_some_and(|at| {
                range.from.is_none_or(|from| at >= from) && range.to.is_none_or(|to| at <= to)
            })
    };
    let equals = |wanted: &Option<String>, value: Option<&str>| {
        wanted.as_deref().is_none_or(|wanted| value == Some(wanted))
    };
    let tags = task.tags.as_deref().unwrap_or_default();
    in_range(&filter.created, Some(task.created_at))
        && in_range(&filter.completed, task.completed_at)
        && in_range(&filter.updated, Some(task.updated_at))
        && filter.status.is_none_or(|status| task.status == status)
        && equals(&filter.task_type, Some(&task.task_type))
        && equals(&filter.project, task.project.as_deref())
        && equals(&filter.batch, task.batch.as_deref())
        && (filter.unique_ids.is_empty()
            || task
                .unique_id
                .as_ref()
                .is_some_and(|id| filter.unique_ids.contains(id)))
        && filter.tags.iter().all(|tag| tags.contains(tag))
        && (filter.customer_review_statuses.is_empty()
            || task
                .customer_review_status
                .as_ref()
                .is_some_and(|status| filter.customer_review_statuses.contains(status)))
}
