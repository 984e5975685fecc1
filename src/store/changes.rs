//! The task change feed's source (SPEC §13): every transaction that creates or changes tasks
//! commits through [`Store::commit_with_changes`], which records what changed for the watchers.
//! On PostgreSQL that is `pg_notify` inside the transaction (delivered at commit, in commit
//! order, to every replica's listener, and only if the transaction commits); on SQLite (one
//! process) it is an in-process publish right after the commit, in commit order.

use std::sync::Arc;

use sea_orm::{
    sqlx::postgres::PgListener, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, Statement,
};
use tokio::sync::broadcast;

use super::{entities::tasks, tasks::from_model, Store};
use crate::{
    domain::{Task, TaskStatus},
    error::{Error, Result},
};

/// The PostgreSQL notification channel every replica listens on.
const CHANNEL: &str = "annotask_task_changes";
/// PostgreSQL refuses payloads of 8000 bytes or more; a task id and its kind are ~26 bytes.
const MAX_PAYLOAD_BYTES: usize = 7_000;
/// Commits waiting for the SQLite feed to read them; past this it has fallen behind.
const LOCAL_QUEUE: usize = 1024;
/// Task ids per look-up (far below SQLite's bound-value limit).
const IDS_PER_QUERY: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Canceled,
    Completed,
    Failed,
}

impl ChangeKind {
    /// A change from `before` to `after`: a new final status names it, anything else updates.
    pub fn of_update(before: TaskStatus, after: TaskStatus) -> Self {
        match after {
            _ if after == before => ChangeKind::Updated,
            TaskStatus::Canceled => ChangeKind::Canceled,
            TaskStatus::Completed => ChangeKind::Completed,
            TaskStatus::Error => ChangeKind::Failed,
            TaskStatus::Pending => ChangeKind::Updated,
        }
    }

    fn code(self) -> char {
        match self {
            ChangeKind::Created => 'c',
            ChangeKind::Updated => 'u',
            ChangeKind::Canceled => 'x',
            ChangeKind::Completed => 'd',
            ChangeKind::Failed => 'f',
        }
    }

    fn from_code(code: char) -> Option<Self> {
        Some(match code {
            'c' => ChangeKind::Created,
            'u' => ChangeKind::Updated,
            'x' => ChangeKind::Canceled,
            'd' => ChangeKind::Completed,
            'f' => ChangeKind::Failed,
            _ => return None,
        })
    }
}

/// One committed change of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskChange {
    pub task_id: String,
    pub kind: ChangeKind,
}

/// What the feed hears next.
pub enum ChangeNotice {
    /// Changes of one commit (or a part of one), in commit order.
    Changes(Vec<TaskChange>),
    /// Changes may have been lost (the listening connection dropped, or the feed fell
    /// behind): nobody can tell which.
    Missed,
}

/// The in-process side of SQLite's feed.
#[derive(Clone)]
pub(super) struct LocalChanges {
    sender: broadcast::Sender<Arc<Vec<TaskChange>>>,
    /// Held from before a commit until its publish, so publishes keep commit order.
    order: Arc<tokio::sync::Mutex<()>>,
}

impl LocalChanges {
    pub(super) fn new() -> Self {
        LocalChanges {
            sender: broadcast::channel(LOCAL_QUEUE).0,
            order: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// A per-process subscription to every committed task change.
pub enum ChangeSubscription {
    Local(broadcast::Receiver<Arc<Vec<TaskChange>>>),
    Postgres(Box<PgListener>),
}

impl ChangeSubscription {
    /// The next notice; an error means the feed cannot go on (the pool was closed).
    pub async fn next(&mut self) -> Result<ChangeNotice> {
        match self {
            ChangeSubscription::Local(receiver) => match receiver.recv().await {
                Ok(changes) => Ok(ChangeNotice::Changes(changes.as_ref().clone())),
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(ChangeNotice::Missed),
                Err(broadcast::error::RecvError::Closed) => Err(Error::Unavailable),
            },
            // `try_recv` answers `None` once when the connection dropped; the next call
            // reconnects and listens again, but what was notified meanwhile is gone.
            ChangeSubscription::Postgres(listener) => match listener.try_recv().await {
                Ok(Some(notification)) => {
                    Ok(ChangeNotice::Changes(parse_payload(notification.payload())))
                }
                Ok(None) => {
                    tracing::warn!("the task change listener lost its connection");
                    Ok(ChangeNotice::Missed)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the task change listener stopped");
                    Err(Error::Unavailable)
                }
            },
        }
    }
}

impl Store {
    /// Commits `txn` and records `changes` for the watchers, on every backend. Every write
    /// that creates or changes a task a client can see commits through here.
    pub(super) async fn commit_with_changes(
        &self,
        txn: DatabaseTransaction,
        changes: Vec<TaskChange>,
    ) -> Result<()> {
        if changes.is_empty() {
            txn.commit().await?;
            return Ok(());
        }
        if self.is_postgres() {
            for payload in payloads(&changes) {
                txn.execute(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANNEL.into(), payload.into()],
                ))
                .await?;
            }
            txn.commit().await?;
            return Ok(());
        }
        // SQLite has one writer connection, held by `txn` until the commit returns: taking the
        // lock first means no later commit can publish before this one.
        let _order = self.local_changes.order.lock().await;
        txn.commit().await?;
        // No receiver (nobody watches) is not an error.
        let _ = self.local_changes.sender.send(Arc::new(changes));
        Ok(())
    }

    /// Starts hearing every committed task change (on PostgreSQL, from every replica, over a
    /// dedicated connection): changes committed after this returns are heard.
    pub async fn subscribe_changes(&self) -> Result<ChangeSubscription> {
        if !self.is_postgres() {
            return Ok(ChangeSubscription::Local(
                self.local_changes.sender.subscribe(),
            ));
        }
        let pool = self.db.get_postgres_connection_pool();
        let listen = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        let listener = listen.await.map_err(|err| {
            tracing::warn!(error = %err, "cannot listen for task changes");
            Error::Unavailable
        })?;
        Ok(ChangeSubscription::Postgres(Box::new(listener)))
    }

    /// The tasks with these ids as they are now, in any order (missing ones left out).
    pub async fn tasks_by_ids(&self, ids: &[String]) -> Result<Vec<Task>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let rows = tasks::Entity::find()
                .filter(tasks::Column::TaskId.is_in(chunk.iter().cloned()))
                .all(&self.read)
                .await?;
            for row in rows {
                found.push(from_model(row)?);
            }
        }
        Ok(found)
    }
}

/// `changes` as notification payloads (`c<id>,u<id>,...`), each under PostgreSQL's limit.
fn payloads(changes: &[TaskChange]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::new();
    for change in changes {
        if !payload.is_empty() && payload.len() + change.task_id.len() + 2 > MAX_PAYLOAD_BYTES {
            payloads.push(std::mem::take(&mut payload));
        }
        if !payload.is_empty() {
            payload.push(',');
        }
        payload.push(change.kind.code());
        payload.push_str(&change.task_id);
    }
    if !payload.is_empty() {
        payloads.push(payload);
    }
    payloads
}

fn parse_payload(payload: &str) -> Vec<TaskChange> {
    payload
        .split(',')
        .filter_map(|item| {
            let mut chars = item.chars();
            let kind = ChangeKind::from_code(chars.next()?)?;
            Some(TaskChange {
                task_id: chars.as_str().to_owned(),
                kind,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_round_trip() {
        let changes: Vec<TaskChange> = (0..1000)
            .map(|n| TaskChange {
                task_id: format!("{n:024}"),
                kind: if n % 2 == 0 {
                    ChangeKind::Created
                } else {
                    ChangeKind::Failed
                },
            })
            .collect();
        let payloads = payloads(&changes);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD_BYTES));
        let parsed: Vec<TaskChange> = payloads.iter().flat_map(|p| parse_payload(p)).collect();
        assert_eq!(parsed, changes);
    }
}
