//! The task change feed's source (SPEC §13): every transaction that creates or changes tasks
//! commits through [`Store::commit_with_changes`], which records what changed for the watchers.
//!
//! On PostgreSQL that is one row in `task_change_log`, written as the transaction's last
//! statement, so it is visible exactly when the transaction commits; each replica's feed reads
//! the rows that became visible since its last read ([`ChangeLogReader`]). On SQLite (one
//! process) it is an in-process publish right after the commit, in commit order.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, QueryFilter, Statement,
};
use tokio::sync::{broadcast, Notify};

use super::{
    entities::tasks,
    tasks::{find_tasks, TaskRow},
    Store,
};
use crate::{
    domain::{Task, TaskStatus},
    error::{Error, Result},
};

/// Commits waiting for the SQLite feed to read them; past this it has fallen behind.
const LOCAL_QUEUE: usize = 1024;
/// Task ids per look-up (far below SQLite's bound-value limit).
const IDS_PER_QUERY: usize = 500;
/// How often a replica's feed reads the change log when nothing in its own process woke it:
/// the most a change committed on another replica waits before its watchers hear of it.
const LOG_READ_EVERY: Duration = Duration::from_millis(100);
/// The least time between two reads, so a busy replica reads once per batch of commits
/// instead of once per commit.
const LOG_READ_GAP: Duration = Duration::from_millis(5);
/// Rows older than this are deleted by [`Store::prune_change_log`].
pub const CHANGE_LOG_RETENTION: Duration = Duration::from_secs(120);
/// A feed that could not read the log for this long may have lost rows to pruning: it tells
/// its watchers changes were missed. Well inside the retention, whatever the clocks.
const LOG_READ_MAX_GAP: Duration = Duration::from_secs(60);
/// Transactions above the horizon a feed remembers having read. The horizon only stays behind
/// while one writing transaction stays open; past this many commits meanwhile the feed starts
/// afresh (and says so) rather than grow.
const MAX_TRACKED_AFTER_HORIZON: usize = 100_000;

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
    /// Changes may have been lost (the feed fell behind, or could not read the log for
    /// longer than its rows are kept): nobody can tell which.
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
    Postgres(Box<ChangeLogReader>),
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
            ChangeSubscription::Postgres(reader) => Ok(reader.next().await),
        }
    }
}

/// Reads PostgreSQL's change log: every committed row once, and a task's rows in commit order.
///
/// Transaction ids are handed out when a transaction first writes, not when it commits, so
/// "every id above the last one read" would skip a transaction that took its id early and
/// committed late. The reader instead keeps the snapshot's horizon (every transaction below it
/// had ended when the snapshot was taken) and the ids at or above it whose rows it has read; a
/// read takes every visible row of a transaction at or above the old horizon that it has not
/// read. If a later change of a task is visible, the earlier one (committed before the later
/// was written) is too, and its `seq` is lower: sorting a read by `seq` keeps a task's order.
pub struct ChangeLogReader {
    store: Store,
    horizon: i64,
    read_above_horizon: HashSet<i64>,
    ready: VecDeque<Vec<TaskChange>>,
    last_read: Instant,
    /// The reader's own replica commits here: its watchers hear of it without waiting a tick.
    local_commit: Arc<Notify>,
}

impl ChangeLogReader {
    async fn start(store: Store) -> Result<Self> {
        let local_commit = store.change_log_written.clone();
        let mut reader = ChangeLogReader {
            store,
            horizon: 0,
            read_above_horizon: HashSet::new(),
            ready: VecDeque::new(),
            last_read: Instant::now(),
            local_commit,
        };
        reader.restart().await?;
        Ok(reader)
    }

    /// Forgets everything read and starts after the rows visible now.
    async fn restart(&mut self) -> Result<()> {
        let (horizon, logged) = self.read_log(None).await?;
        self.horizon = horizon;
        self.read_above_horizon = logged.into_iter().map(|(xid, _)| xid).collect();
        self.ready.clear();
        self.last_read = Instant::now();
        Ok(())
    }

    /// The next commit's changes, or `Missed` if rows may have been lost.
    async fn next(&mut self) -> ChangeNotice {
        loop {
            if let Some(changes) = self.ready.pop_front() {
                return ChangeNotice::Changes(changes);
            }
            tokio::select! {
                () = self.local_commit.notified() => {}
                () = tokio::time::sleep(LOG_READ_EVERY) => {}
            }
            tokio::time::sleep_until((self.last_read + LOG_READ_GAP).into()).await;
            if let Err(err) = self.read_new_rows().await {
                // The rows stay in the log: the next read that succeeds picks them up.
                tracing::warn!(error = %err, "reading the task change log failed");
                tokio::time::sleep(LOG_READ_EVERY).await;
                continue;
            }
            if self.last_read.elapsed() > LOG_READ_MAX_GAP
                || self.read_above_horizon.len() > MAX_TRACKED_AFTER_HORIZON
            {
                tracing::warn!("the task change feed fell behind its log; starting afresh");
                let restarted = self.restart().await;
                if let Err(err) = restarted {
                    tracing::warn!(error = %err, "restarting the task change feed failed");
                }
                return ChangeNotice::Missed;
            }
            self.last_read = Instant::now();
        }
    }

    async fn read_new_rows(&mut self) -> Result<()> {
        let (horizon, logged) = self.read_log(Some(self.horizon)).await?;
        for (xid, changes) in logged {
            if self.read_above_horizon.insert(xid) {
                self.ready.push_back(parse_changes(&changes));
            }
        }
        self.horizon = horizon;
        self.read_above_horizon.retain(|xid| *xid >= horizon);
        Ok(())
    }

    /// The snapshot's horizon, and the visible rows (transaction id, changes) in `seq` order
    /// of transactions at or above `from` (by default, the horizon itself).
    async fn read_log(&self, from: Option<i64>) -> Result<(i64, Vec<(i64, String)>)> {
        let rows = self
            .store
            .db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH snapshot AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon) \
                 SELECT snapshot.horizon, log.xid, log.changes FROM snapshot \
                 LEFT JOIN task_change_log AS log ON log.xid >= COALESCE($1, snapshot.horizon) \
                 ORDER BY log.seq",
                [from.into()],
            ))
            .await?;
        let first = rows.first().ok_or(Error::Unavailable)?;
        let horizon = first.try_get("", "horizon")?;
        let mut logged = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(xid) = row.try_get::<Option<i64>>("", "xid")? {
                logged.push((xid, row.try_get::<String>("", "changes")?));
            }
        }
        Ok((horizon, logged))
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
            // The last statement: the task rows it covers are locked by now (see the reader).
            txn.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO task_change_log (xid, changes) \
                 VALUES (pg_current_xact_id()::text::bigint, $1)",
                [encode_changes(&changes).into()],
            ))
            .await?;
            txn.commit().await?;
            self.change_log_written.notify_one();
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
        let reader = ChangeLogReader::start(self.clone())
            .await
            .inspect_err(|err| tracing::warn!(error = %err, "cannot read the task change log"))?;
        Ok(ChangeSubscription::Postgres(Box::new(reader)))
    }

    /// Deletes change-log rows older than [`CHANGE_LOG_RETENTION`] (every replica's feed has
    /// read them long before); nothing to do on SQLite.
    pub async fn prune_change_log(&self) -> Result<u64> {
        if !self.is_postgres() {
            return Ok(0);
        }
        let deleted = self
            .db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM task_change_log \
                 WHERE logged_at < clock_timestamp() - make_interval(secs => $1)",
                [(CHANGE_LOG_RETENTION.as_secs_f64()).into()],
            ))
            .await?;
        Ok(deleted.rows_affected())
    }

    /// The tasks with these ids as they are now, in any order (missing ones left out).
    pub async fn tasks_by_ids(&self, ids: &[String]) -> Result<Vec<Task>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let rows = find_tasks()
                .filter(tasks::Column::TaskId.is_in(chunk.iter().cloned()))
                .into_model::<TaskRow>()
                .all(&self.read)
                .await?;
            for row in rows {
                found.push(row.into_task()?);
            }
        }
        Ok(found)
    }
}

/// `changes` as one log row's text: `c<id>,u<id>,...` in order.
fn encode_changes(changes: &[TaskChange]) -> String {
    let mut text = String::with_capacity(changes.len() * 26);
    for change in changes {
        if !text.is_empty() {
            text.push(',');
        }
        text.push(change.kind.code());
        text.push_str(&change.task_id);
    }
    text
}

fn parse_changes(text: &str) -> Vec<TaskChange> {
    text.split(',')
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
    fn changes_round_trip_through_their_text() {
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
        assert_eq!(parse_changes(&encode_changes(&changes)), changes);
        assert!(parse_changes(&encode_changes(&[])).is_empty());
    }
}
