//! Task rows, their tag index and the counters behind list totals.

use std::sync::{LazyLock, OnceLock};

use sea_orm::{
    sea_query::{Alias, Expr, Func, OnConflict, Query, SimpleExpr},
    sqlx, ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, Iden, Iterable, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Statement, TransactionTrait, Values,
};

use super::{
    batches::OnBatchCompleted,
    changes::{ChangeKind, TaskChange},
    counters::{hour_of, CounterDeltas, COMPLETED_EVENT, HOUR_MILLIS, UPDATED_EVENT},
    entities::{
        task_counts, task_event_hour_counts, task_hour_counts, task_tag_counts, task_tags, tasks,
    },
    is_unique_violation, Store,
};
use crate::{
    domain::{
        Audit, JsonObject, NewDelivery, PageToken, Scope, Task, TaskFilter, TaskId, TaskLease,
        TaskStatus, TimeRange, Timestamp,
    },
    error::{Error, Result},
};

impl Store {
    pub async fn get_task(&self, scope: Scope, id: &TaskId) -> Result<Option<Task>> {
        let statement = get_task_statement(self.read.get_database_backend(), scope, id);
        TaskRow::find_by_statement(statement)
            .one(&self.read)
            .await?
            .map(TaskRow::into_task)
            .transpose()
    }

    /// Loads the task under a row lock, lets `change` apply the service's rules to it, and
    /// writes the result back with its tag rows, counters and the callback `change` asks for
    /// (the outbox), all in one transaction.
    pub async fn update_task<F>(
        &self,
        scope: Scope,
        id: &TaskId,
        change: F,
        on_batch_completed: OnBatchCompleted<'_>,
    ) -> Result<Task>
    where
        F: FnOnce(&mut Task) -> Result<Option<NewDelivery>>,
    {
        let txn = self.db.begin().await?;
        let before = find_tasks()
            .filter(tasks::Column::TaskId.eq(id.as_str()))
            .filter(scope_condition(scope))
            .lock_exclusive()
            .into_model::<TaskRow>()
            .one(&txn)
            .await?
            .ok_or_else(Error::task_not_found)?
            .into_task()?;
        let mut task = before.clone();
        let callback = change(&mut task)?;
        if task == before {
            txn.commit().await?;
            return Ok(task);
        }
        // Only the columns that changed (a metadata edit does not send the params again), and
        // not `Entity::update`, which reads the row back (RETURNING every column): the task
        // written is the task in hand.
        let mut changed = to_active_model(&task)?;
        let unchanged = to_active_model(&before)?;
        for column in tasks::Column::iter() {
            if changed.get(column) == unchanged.get(column) {
                changed.not_set(column);
            }
        }
        let updated = if changed.is_changed() {
            tasks::Entity::update_many()
                .set(changed)
                .filter(tasks::Column::TaskId.eq(id.as_str()))
                .exec(&txn)
                .await
                .map(drop)
        } else {
            Ok(())
        };
        if let Err(err) = updated {
            // PostgreSQL refuses further statements in a failed transaction: look up outside it.
            drop(txn);
            return Err(translate_write_error(&self.db, err, &task).await);
        }
        if task.tags != before.tags {
            replace_tag_rows(&txn, &task).await?;
        }
        let mut counters = CounterDeltas::default();
        counters.change(&before, &task);
        counters.apply(&txn).await?;
        if let Some(callback) = &callback {
            super::callbacks::insert_delivery(&txn, callback).await?;
        }
        if let (Some(batch), true) = (&task.batch, task.status != before.status) {
            super::batches::refresh_batch(&txn, scope, batch, on_batch_completed).await?;
        }
        // A lease alone is invisible to clients, so it is no change to watch.
        let visible = {
            let mut unleased = task.clone();
            unleased.lease.clone_from(&before.lease);
            unleased != before
        };
        let changes = if visible {
            vec![TaskChange {
                task_id: task.id.to_string(),
                kind: ChangeKind::of_update(before.status, task.status),
            }]
        } else {
            Vec::new()
        };
        self.commit_with_changes(txn, changes).await?;
        Ok(task)
    }

    /// One page in list order, starting after `after`, or `offset` rows in (legacy paging,
    /// whose cost grows with the offset), and the exact number of matching tasks: both read
    /// from one snapshot, so the total never contradicts the page under concurrent writes.
    pub async fn list_page(
        &self,
        scope: Scope,
        filter: &TaskFilter,
        after: Option<&PageToken>,
        offset: u64,
        fetch: u64,
    ) -> Result<(Vec<Task>, u64)> {
        let counted_total = if filter.is_answered_by_counters() {
            Some(total_select::<task_counts::Entity>(counter_condition(scope, filter)).into_query())
        } else if let Some(tag) = filter.tag_counter() {
            // A common tag's page walks the list index like an unfiltered one, and its total is
            // the tag's counters: one statement too. How common is read first, on its own: it
            // only picks the plan (a rare tag's tasks are gathered by id, below); the total
            // still comes from the page's own snapshot.
            let tagged = sum_counts::<task_tag_counts::Entity>(
                &self.read,
                tag_counter_condition(scope, tag),
            )
            .await?;
            (tagged > RARE_TAG_ROWS).then(|| {
                total_select::<task_tag_counts::Entity>(tag_total_condition(scope, tag, filter))
                    .into_query()
            })
        } else {
            None
        };
        if let Some(total) = counted_total {
            if let Some(found) = self
                .list_page_with_counted_total(scope, filter, total, after, offset, fetch)
                .await?
            {
                return Ok(found);
            }
        }
        let txn = self.begin_snapshot().await?;
        let candidates = rare_tag_candidates(&txn, scope, filter).await?;
        let mut select = page_select(scope, filter, after);
        if let Some(ids) = &candidates {
            select = select.filter(tasks::Column::TaskId.is_in(ids.iter().cloned()));
        }
        if offset > 0 {
            select = select.offset(offset);
        }
        let docs = select
            .limit(fetch)
            .into_model::<TaskRow>()
            .all(&txn)
            .await?
            .into_iter()
            .map(TaskRow::into_task)
            .collect::<Result<Vec<_>>>()?;
        // One tag (and a status) is answered by its counters, whatever the tag's size.
        let total = match &candidates {
            Some(ids) if filter.tag_counter().is_none() => {
                tasks::Entity::find()
                    .filter(filter_condition(scope, filter))
                    .filter(tasks::Column::TaskId.is_in(ids.iter().cloned()))
                    .count(&txn)
                    .await?
            }
            _ => count_tasks(&txn, scope, filter).await?,
        };
        txn.commit().await?;
        Ok((docs, total))
    }

    /// The page and its total (`total`, a sum over counter rows) in one statement (one
    /// snapshot, one round trip, no transaction): the total rides on every row as a scalar
    /// subquery. `None` for an empty page, which carries no total; the caller then reads both
    /// in a transaction.
    async fn list_page_with_counted_total(
        &self,
        scope: Scope,
        filter: &TaskFilter,
        total: sea_orm::sea_query::SelectStatement,
        after: Option<&PageToken>,
        offset: u64,
        fetch: u64,
    ) -> Result<Option<(Vec<Task>, u64)>> {
        let mut select = page_select(scope, filter, after).expr_as(
            SimpleExpr::SubQuery(None, Box::new(total.into_sub_query_statement())),
            "page_total",
        );
        if offset > 0 {
            select = select.offset(offset);
        }
        let statement = select.limit(fetch).build(self.read.get_database_backend());
        let rows = self.read.query_all(statement).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let total: Option<i64> = first.try_get("", "page_total")?;
        let docs = rows
            .iter()
            .map(|row| TaskRow::from_query_result(row, "")?.into_task())
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((docs, count_of(total))))
    }

    /// A read-only transaction whose statements all see one snapshot:
    /// REPEATABLE READ on PostgreSQL; on SQLite (WAL) every read transaction is one.
    async fn begin_snapshot(&self) -> Result<DatabaseTransaction> {
        Ok(if self.is_postgres() {
            self.snapshots
                .begin_with_config(
                    Some(sea_orm::IsolationLevel::RepeatableRead),
                    Some(sea_orm::AccessMode::ReadOnly),
                )
                .await?
        } else {
            self.snapshots.begin().await?
        })
    }

    /// Sends every task matching `filter` after `after` to `out`, in list order, from one
    /// read transaction (a snapshot: REPEATABLE READ on PostgreSQL, a WAL read snapshot on
    /// SQLite), one keyset page at a time so memory stays flat. A closed `out` ends it early.
    pub async fn export_tasks(
        &self,
        scope: Scope,
        filter: &TaskFilter,
        mut after: Option<PageToken>,
        out: &tokio::sync::mpsc::Sender<Task>,
    ) -> Result<()> {
        const EXPORT_PAGE: u64 = 500;
        let txn = self.begin_snapshot().await?;
        loop {
            let rows = page_select(scope, filter, after.as_ref())
                .limit(EXPORT_PAGE)
                .into_model::<TaskRow>()
                .all(&txn)
                .await?;
            let full = rows.len() as u64 == EXPORT_PAGE;
            for row in rows {
                let task = row.into_task()?;
                after = Some(PageToken {
                    created_at: task.created_at,
                    task_id: task.id.clone(),
                });
                if out.send(task).await.is_err() {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Pending tasks over every account and world (for the queue metrics).
    pub(super) async fn count_all_pending(&self) -> Result<u64> {
        sum_counts::<task_counts::Entity>(
            &self.read,
            Condition::all().add(task_counts::Column::Status.eq(TaskStatus::Pending.as_str())),
        )
        .await
    }
}

/// The exact number of tasks matching `filter`: from the counters when they answer it (every
/// filter but several tags, a tag with more than a status, unique_ids, review statuses and two
/// time windows at once), else by counting rows. A window on one of the three clocks
/// (creation, completion, last update) sums that clock's hourly counters over its whole hours
/// and counts only the partial hours at its edges row by row, through the clock's index.
async fn count_tasks(db: &impl ConnectionTrait, scope: Scope, filter: &TaskFilter) -> Result<u64> {
    if let Some(tag) = filter.tag_counter() {
        return sum_counts::<task_tag_counts::Entity>(db, tag_total_condition(scope, tag, filter))
            .await;
    }
    let mut unwindowed = filter.clone();
    for clock in Clock::ALL {
        *clock.window_mut(&mut unwindowed) = TimeRange::default();
    }
    if !unwindowed.is_answered_by_counters() {
        return count_rows(db, scope, filter).await;
    }
    let windowed: Vec<Clock> = Clock::ALL
        .into_iter()
        .filter(|clock| !clock.window(filter).is_open())
        .collect();
    let clock = match windowed.as_slice() {
        [] => return sum_counts::<task_counts::Entity>(db, counter_condition(scope, filter)).await,
        [clock] => *clock,
        _ => return count_rows(db, scope, filter).await,
    };
    let window = clock.window(filter);
    let from = window.from.map(Timestamp::millis);
    let to = window.to.map(Timestamp::millis);
    let first_whole = from
        .map(|from| from.div_euclid(HOUR_MILLIS) + i64::from(from.rem_euclid(HOUR_MILLIS) != 0));
    let end_whole = to.map(|to| (to + 1).div_euclid(HOUR_MILLIS));
    if let (Some(first), Some(end)) = (first_whole, end_whole) {
        if first >= end {
            return count_rows(db, scope, filter).await;
        }
    }
    let mut total = clock
        .sum_whole_hours(db, counter_condition(scope, filter), first_whole, end_whole)
        .await?;
    let edge = |from: i64, to: i64| {
        let mut edge = filter.clone();
        *clock.window_mut(&mut edge) = TimeRange {
            from: Some(Timestamp::from_millis(from)),
            to: Some(Timestamp::from_millis(to)),
        };
        edge
    };
    if let (Some(from), Some(first)) = (from, first_whole) {
        total += count_rows(db, scope, &edge(from, first * HOUR_MILLIS - 1)).await?;
    }
    if let (Some(to), Some(end)) = (to, end_whole) {
        total += count_rows(db, scope, &edge(end * HOUR_MILLIS, to)).await?;
    }
    Ok(total)
}

/// The three times a list can be windowed on, each with hourly counters.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Created,
    Completed,
    Updated,
}

impl Clock {
    const ALL: [Clock; 3] = [Clock::Created, Clock::Completed, Clock::Updated];

    fn window(self, filter: &TaskFilter) -> TimeRange {
        match self {
            Clock::Created => filter.created,
            Clock::Completed => filter.completed,
            Clock::Updated => filter.updated,
        }
    }

    fn window_mut(self, filter: &mut TaskFilter) -> &mut TimeRange {
        match self {
            Clock::Created => &mut filter.created,
            Clock::Completed => &mut filter.completed,
            Clock::Updated => &mut filter.updated,
        }
    }

    /// The tasks counted in this clock's hours from `first` to before `end` (either open)
    /// in the counter rows matching `condition`. Update hours are creation hours plus the
    /// shifts of tasks updated in another hour (migration 10).
    async fn sum_whole_hours(
        self,
        db: &impl ConnectionTrait,
        condition: Condition,
        first: Option<i64>,
        end: Option<i64>,
    ) -> Result<u64> {
        let in_hours = |condition: Condition, hour: SimpleExpr| {
            let hour = Expr::expr(hour);
            condition
                .add_option(first.map(|first| hour.clone().gte(first)))
                .add_option(end.map(|end| hour.lt(end)))
        };
        let created_hours = || {
            let condition = in_hours(
                condition.clone(),
                Expr::col(task_hour_counts::Column::CreatedHour).into(),
            );
            sum_signed_counts::<task_hour_counts::Entity>(db, condition)
        };
        let event_hours = |event: &'static str| {
            let condition = in_hours(
                condition
                    .clone()
                    .add(task_event_hour_counts::Column::Event.eq(event)),
                Expr::col(task_event_hour_counts::Column::Hour).into(),
            );
            sum_signed_counts::<task_event_hour_counts::Entity>(db, condition)
        };
        let sum = match self {
            Clock::Created => created_hours().await?,
            Clock::Completed => event_hours(COMPLETED_EVENT).await?,
            Clock::Updated => created_hours().await? + event_hours(UPDATED_EVENT).await?,
        };
        Ok(count_of(Some(sum)))
    }
}

/// Tasks carrying a tag this rare are looked up by their tag rows, not found by walking the
/// list index (which, for a rare tag, means scanning past every newer task).
const RARE_TAG_ROWS: u64 = 5_000;

/// For a filter with tags: the ids of the tasks carrying its rarest tag, when there are at most
/// [`RARE_TAG_ROWS`] of them (read from the tag's counters); `None` otherwise.
async fn rare_tag_candidates(
    db: &impl ConnectionTrait,
    scope: Scope,
    filter: &TaskFilter,
) -> Result<Option<Vec<String>>> {
    let tag_rows = |tag: &str| {
        task_tags::Entity::find()
            .filter(task_tags::Column::AccountId.eq(scope.account_id))
            .filter(task_tags::Column::IsTest.eq(scope.is_test))
            .filter(task_tags::Column::Tag.eq(tag.to_owned()))
    };
    let mut rarest: Option<(u64, &str)> = None;
    for tag in &filter.tags {
        let rows =
            sum_counts::<task_tag_counts::Entity>(db, tag_counter_condition(scope, tag)).await?;
        if rarest.is_none_or(|(fewest, _)| rows < fewest) {
            rarest = Some((rows, tag));
        }
    }
    let Some((_, tag)) = rarest.filter(|(rows, _)| *rows <= RARE_TAG_ROWS) else {
        return Ok(None);
    };
    let ids: Vec<String> = tag_rows(tag)
        .select_only()
        .column(task_tags::Column::TaskId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(Some(ids))
}

async fn count_rows(db: &impl ConnectionTrait, scope: Scope, filter: &TaskFilter) -> Result<u64> {
    let empty =
        |window: TimeRange| matches!((window.from, window.to), (Some(from), Some(to)) if from > to);
    if Clock::ALL
        .into_iter()
        .any(|clock| empty(clock.window(filter)))
    {
        return Ok(0);
    }
    Ok(tasks::Entity::find()
        .filter(filter_condition(scope, filter))
        .count(db)
        .await?)
}

async fn sum_counts<E: EntityTrait>(
    db: &impl ConnectionTrait,
    condition: Condition,
) -> Result<u64> {
    Ok(count_of(Some(sum_signed_counts::<E>(db, condition).await?)))
}

/// The sum of the counter rows matching `condition`, which may be part of a count (the
/// update-hour shifts are negative where tasks left their creation hour).
async fn sum_signed_counts<E: EntityTrait>(
    db: &impl ConnectionTrait,
    condition: Condition,
) -> Result<i64> {
    let total: Option<Option<i64>> = total_select::<E>(condition).into_tuple().one(db).await?;
    Ok(total.flatten().unwrap_or(0))
}

/// A counter sum as a count: no rows sum to NULL, and a sum cannot honestly be negative.
fn count_of(sum: Option<i64>) -> u64 {
    sum.unwrap_or(0).max(0).unsigned_abs()
}

/// The counter rows of one tag in one account's world (every status).
fn tag_counter_condition(scope: Scope, tag: &str) -> Condition {
    Condition::all()
        .add(task_tag_counts::Column::AccountId.eq(scope.account_id))
        .add(task_tag_counts::Column::IsTest.eq(scope.is_test))
        .add(task_tag_counts::Column::Tag.eq(tag))
}

/// The counter rows of `filter` when it is one tag and at most a status
/// ([`TaskFilter::tag_counter`]).
fn tag_total_condition(scope: Scope, tag: &str, filter: &TaskFilter) -> Condition {
    let condition = tag_counter_condition(scope, tag);
    match filter.status {
        Some(status) => condition.add(task_tag_counts::Column::Status.eq(status.as_str())),
        None => condition,
    }
}

/// `SELECT SUM(total)` over the counter rows matching `condition`.
fn total_select<E: EntityTrait>(condition: Condition) -> sea_orm::Select<E> {
    E::find()
        .select_only()
        .column_as(counter_sum(), "total")
        .filter(condition)
}

/// The counter rows matching `filter`'s dimensions; both counter tables name them alike.
fn counter_condition(scope: Scope, filter: &TaskFilter) -> Condition {
    let column = |name: &str| Expr::col(Alias::new(name));
    let mut condition = Condition::all()
        .add(column("account_id").eq(scope.account_id))
        .add(column("is_test").eq(scope.is_test));
    if let Some(status) = filter.status {
        condition = condition.add(column("status").eq(status.as_str()));
    }
    if let Some(task_type) = &filter.task_type {
        condition = condition.add(column("task_type").eq(task_type.as_str()));
    }
    if let Some(project) = &filter.project {
        condition = condition.add(column("project").eq(project.as_str()));
    }
    if let Some(batch) = &filter.batch {
        condition = condition.add(column("batch").eq(batch.as_str()));
    }
    condition
}

/// `SUM(total)` over counter rows, as a bigint: PostgreSQL's SUM(bigint) is numeric, so it
/// is cast back for both backends to decode an i64.
pub(super) fn counter_sum() -> SimpleExpr {
    Func::cast_as(
        Func::sum(Expr::col(Alias::new("total"))),
        Alias::new("bigint"),
    )
    .into()
}

/// What became of one task in a bulk insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkInserted {
    Created,
    /// Another task (already stored, or earlier in the same call) holds its unique_id.
    Duplicate {
        holder: String,
    },
}

/// Rows per multi-row INSERT: ~24 bound values per task stays far below SQLite's 32,766.
pub(super) const ROWS_PER_INSERT: usize = 512;

/// Splits `items` into chunks whose lengths are powers of two (largest first, at most `max`).
/// Every distinct row count is a distinct prepared statement, cached per connection: with
/// arbitrary group sizes those caches grew the server by ~10 MiB a minute under steady creates
/// (a 5-minute soak); with powers of two there are at most ten shapes per statement.
pub(super) fn statement_sized_chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let mut size = max.min(rest.len()).max(1);
        size = 1 << (usize::BITS - 1 - size.leading_zeros());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

impl Store {
    /// Inserts many tasks in one transaction: one multi-row `INSERT … ON CONFLICT DO NOTHING`
    /// per chunk, then their tags, counters, callbacks and batches. A task whose unique_id is
    /// taken is not inserted and is answered with the holder; the others commit together.
    /// Locks (unique_id index entries, counter rows, batch rows) are taken in sorted order, so
    /// concurrent bulk inserts on PostgreSQL cannot deadlock on each other.
    pub async fn insert_tasks(
        &self,
        items: &[(Task, Option<NewDelivery>)],
        on_batch_completed: OnBatchCompleted<'_>,
    ) -> Result<Vec<BulkInserted>> {
        let txn = self.db.begin().await?;
        let outcomes = insert_tasks_in(&txn, items, on_batch_completed).await?;
        self.commit_with_changes(
            txn,
            created_changes(items.iter().map(|(task, _)| task), &outcomes),
        )
        .await?;
        Ok(outcomes)
    }
}

/// The `created` changes of a bulk insert's tasks that were inserted.
pub(super) fn created_changes<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    outcomes: &[BulkInserted],
) -> Vec<TaskChange> {
    tasks
        .zip(outcomes)
        .filter(|(_, outcome)| **outcome == BulkInserted::Created)
        .map(|(task, _)| TaskChange {
            task_id: task.id.to_string(),
            kind: ChangeKind::Created,
        })
        .collect()
}

/// Inserts new tasks inside `txn`: each is created, or refused for its unique_id (answered with
/// the holder). On SQLite tasks outside batches go in one round trip (see `one_statement`).
pub(super) async fn insert_tasks_in(
    txn: &DatabaseTransaction,
    items: &[(Task, Option<NewDelivery>)],
    on_batch_completed: OnBatchCompleted<'_>,
) -> Result<Vec<BulkInserted>> {
    if txn.get_database_backend() == DbBackend::Sqlite
        && super::one_statement::rows_can_be_inserted_together(items)
    {
        return super::one_statement::sqlite_insert_new_tasks(txn, items).await;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[a].0.unique_id.cmp(&items[b].0.unique_id));
    let mut inserted = std::collections::HashSet::new();
    for chunk in statement_sized_chunks(&order, ROWS_PER_INSERT) {
        let rows = chunk
            .iter()
            .map(|&index| to_active_model(&items[index].0))
            .collect::<Result<Vec<_>>>()?;
        let mut insert = tasks::Entity::insert_many(rows)
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .into_query();
        insert.returning_col(tasks::Column::TaskId);
        let statement = txn.get_database_backend().build(&insert);
        for row in txn.query_all(statement).await? {
            inserted.insert(row.try_get::<String>("", "task_id")?);
        }
    }

    let mut outcomes = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for (index, (task, _)) in items.iter().enumerate() {
        if inserted.contains(task.id.as_str()) {
            outcomes.push(BulkInserted::Created);
            continue;
        }
        let Some(unique_id) = task.unique_id.clone() else {
            // Only a unique_id can conflict; a task id collision would be a bug.
            tracing::error!(task_id = %task.id, "a task without unique_id was not inserted");
            return Err(Error::Internal);
        };
        refused.push((index, task.scope, unique_id));
        outcomes.push(BulkInserted::Duplicate {
            holder: String::new(),
        });
    }
    for (index, scope, unique_id) in refused {
        let holder = find_task_id_by_unique_id(txn, scope, &unique_id)
            .await?
            .unwrap_or_default();
        outcomes[index] = BulkInserted::Duplicate { holder };
    }

    let created = || {
        items
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == BulkInserted::Created)
            .map(|(item, _)| item)
    };
    let tag_rows: Vec<_> = created()
        .flat_map(|(task, _)| {
            task.tags
                .iter()
                .flatten()
                .map(move |tag| task_tags::ActiveModel {
                    task_id: Set(task.id.to_string()),
                    tag: Set(tag.clone()),
                    account_id: Set(task.scope.account_id),
                    is_test: Set(task.scope.is_test),
                })
        })
        .collect();
    for chunk in statement_sized_chunks(&tag_rows, ROWS_PER_INSERT) {
        task_tags::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(txn)
            .await?;
    }
    let mut counters = CounterDeltas::default();
    for (task, _) in created() {
        counters.add(task, 1);
    }
    counters.apply(txn).await?;
    for (_, callback) in created() {
        if let Some(callback) = callback {
            super::callbacks::insert_delivery(txn, callback).await?;
        }
    }
    let batches: std::collections::BTreeSet<_> = created()
        .filter_map(|(task, _)| {
            Some((
                task.scope.account_id,
                task.scope.is_test,
                task.batch.as_deref()?,
            ))
        })
        .collect();
    for (account_id, is_test, batch) in batches {
        let scope = Scope {
            account_id,
            is_test,
        };
        super::batches::refresh_batch(txn, scope, batch, on_batch_completed).await?;
    }
    Ok(outcomes)
}

pub(super) async fn find_task_id_by_unique_id(
    db: &impl ConnectionTrait,
    scope: Scope,
    unique_id: &str,
) -> Result<Option<String>> {
    Ok(tasks::Entity::find()
        .select_only()
        .column(tasks::Column::TaskId)
        .filter(scope_condition(scope))
        .filter(tasks::Column::UniqueId.eq(unique_id))
        .into_tuple()
        .one(db)
        .await?)
}

/// A unique violation on a task write can only be its unique_id: name the holder.
async fn translate_write_error(
    db: &impl ConnectionTrait,
    err: sea_orm::DbErr,
    task: &Task,
) -> Error {
    let Some(unique_id) = task
        .unique_id
        .as_deref()
        .filter(|_| is_unique_violation(&err))
    else {
        return err.into();
    };
    match find_task_id_by_unique_id(db, task.scope, unique_id).await {
        Ok(holder) => Error::UniqueIdConflict {
            unique_id: unique_id.to_owned(),
            // Empty only if the holder let go in the meantime; a retry will then succeed.
            task_id: holder.unwrap_or_default(),
        },
        Err(lookup) => lookup,
    }
}

/// Tasks matching `filter` in list order (`created_at` desc, then `task_id` desc), after
/// `after` when given.
fn page_select(
    scope: Scope,
    filter: &TaskFilter,
    after: Option<&PageToken>,
) -> sea_orm::Select<tasks::Entity> {
    let mut select = find_tasks().filter(filter_condition(scope, filter));
    if let Some(position) = after {
        // A row-value comparison, `(created_at, task_id) < (?, ?)`: both databases walk the
        // list index straight to the position, where the equivalent OR made SQLite scan every
        // row before it.
        select = select.filter(
            Expr::tuple([
                Expr::col(tasks::Column::CreatedAt).into(),
                Expr::col(tasks::Column::TaskId).into(),
            ])
            .lt(Expr::tuple([
                Expr::value(position.created_at.millis()),
                Expr::value(position.task_id.as_str()),
            ])),
        );
    }
    select
        .order_by_desc(tasks::Column::CreatedAt)
        .order_by_desc(tasks::Column::TaskId)
}

/// A task by id within its scope. Every GET runs it: its text is written once per backend, as
/// sea-query writing it anew (quoting each of the column names) was a sixth of a GET's CPU.
fn get_task_statement(backend: DbBackend, scope: Scope, id: &TaskId) -> Statement {
    static POSTGRES: OnceLock<String> = OnceLock::new();
    static SQLITE: OnceLock<String> = OnceLock::new();
    let text = match backend {
        DbBackend::Postgres => &POSTGRES,
        DbBackend::Sqlite => &SQLITE,
        DbBackend::MySql => return build_get_task_statement(backend, scope, id),
    };
    let sql = text.get_or_init(|| build_get_task_statement(backend, scope, id).sql);
    // In the order the builder binds them; a test holds the two together.
    let values = Values(vec![
        id.as_str().into(),
        scope.account_id.into(),
        scope.is_test.into(),
        1_u64.into(),
    ]);
    Statement::from_sql_and_values(backend, sql.clone(), values)
}

fn build_get_task_statement(backend: DbBackend, scope: Scope, id: &TaskId) -> Statement {
    find_tasks()
        .filter(tasks::Column::TaskId.eq(id.as_str()))
        .filter(scope_condition(scope))
        .limit(1)
        .build(backend)
}

pub(super) fn scope_condition(scope: Scope) -> Condition {
    Condition::all()
        .add(tasks::Column::AccountId.eq(scope.account_id))
        .add(tasks::Column::IsTest.eq(scope.is_test))
}

pub(super) fn filter_condition(scope: Scope, filter: &TaskFilter) -> Condition {
    let mut condition = scope_condition(scope);
    for (column, range) in [
        (tasks::Column::CreatedAt, filter.created),
        (tasks::Column::CompletedAt, filter.completed),
        (tasks::Column::UpdatedAt, filter.updated),
    ] {
        if let Some(from) = range.from {
            condition = condition.add(column.gte(from.millis()));
        }
        if let Some(to) = range.to {
            condition = condition.add(column.lte(to.millis()));
        }
    }
    // Implied by the update window, and what its index is on.
    if let Some(from) = filter.updated.from {
        condition = condition.add(tasks::Column::UpdatedHour.gte(hour_of(from)));
    }
    if let Some(to) = filter.updated.to {
        condition = condition.add(tasks::Column::UpdatedHour.lte(hour_of(to)));
    }
    if let Some(status) = filter.status {
        condition = condition.add(tasks::Column::Status.eq(status.as_str()));
    }
    if let Some(task_type) = &filter.task_type {
        condition = condition.add(tasks::Column::TaskType.eq(task_type.as_str()));
    }
    if let Some(project) = &filter.project {
        condition = condition.add(tasks::Column::Project.eq(project.as_str()));
    }
    if let Some(batch) = &filter.batch {
        condition = condition.add(tasks::Column::Batch.eq(batch.as_str()));
    }
    if !filter.unique_ids.is_empty() {
        condition = condition.add(tasks::Column::UniqueId.is_in(filter.unique_ids.iter().cloned()));
    }
    if !filter.customer_review_statuses.is_empty() {
        condition = condition.add(
            tasks::Column::CustomerReviewStatus
                .is_in(filter.customer_review_statuses.iter().cloned()),
        );
    }
    // A probe of the tag's primary key (task_id, tag) per task: a page walking the list index
    // stops after its rows, where `task_id IN (every task with the tag)` first gathers them all.
    for tag in &filter.tags {
        condition = condition.add(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(task_tags::Entity)
                .and_where(
                    Expr::col((task_tags::Entity, task_tags::Column::TaskId))
                        .equals((tasks::Entity, tasks::Column::TaskId)),
                )
                .and_where(Expr::col((task_tags::Entity, task_tags::Column::Tag)).eq(tag.as_str()))
                .to_owned(),
        ));
    }
    condition
}

async fn replace_tag_rows(txn: &impl ConnectionTrait, task: &Task) -> Result<()> {
    task_tags::Entity::delete_many()
        .filter(task_tags::Column::TaskId.eq(task.id.as_str()))
        .exec(txn)
        .await?;
    let tags = task.tags.as_deref().unwrap_or_default();
    if tags.is_empty() {
        return Ok(());
    }
    let rows = tags.iter().map(|tag| task_tags::ActiveModel {
        task_id: Set(task.id.to_string()),
        tag: Set(tag.clone()),
        account_id: Set(task.scope.account_id),
        is_test: Set(task.scope.is_test),
    });
    task_tags::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

pub(super) fn to_json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| {
        tracing::error!(error = %err, "serialising a task column failed");
        Error::Internal
    })
}

pub(super) fn from_json_text<T: serde::de::DeserializeOwned>(
    text: &str,
    column: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|err| {
        tracing::error!(error = %err, column, "stored task column is not valid JSON");
        Error::Internal
    })
}

/// A stored object column, passed on as its text (checked, not parsed into values).
fn stored_object(text: String, column: &str) -> Result<JsonObject> {
    JsonObject::from_stored(text).map_err(|err| {
        tracing::error!(error = %err, column, "stored task column is not a JSON object");
        Error::Internal
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAudit {
    accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comments: Option<String>,
    created_at: i64,
}

pub(super) fn to_active_model(task: &Task) -> Result<tasks::ActiveModel> {
    let audits: Vec<StoredAudit> = task
        .audits
        .iter()
        .map(|audit| StoredAudit {
            accepted: audit.accepted,
            comments: audit.comments.clone(),
            created_at: audit.created_at.millis(),
        })
        .collect();
    Ok(tasks::ActiveModel {
        task_id: Set(task.id.to_string()),
        account_id: Set(task.scope.account_id),
        is_test: Set(task.scope.is_test),
        task_type: Set(task.task_type.clone()),
        status: Set(task.status.as_str().to_owned()),
        instruction: Set(task.instruction.clone()),
        params: Set(task.params.as_str().to_owned()),
        callback_url: Set(task.callback_url.clone()),
        metadata: Set(task.metadata.as_str().to_owned()),
        unique_id: Set(task.unique_id.clone()),
        tags: Set(task.tags.as_ref().map(to_json_text).transpose()?),
        project: Set(task.project.clone()),
        batch: Set(task.batch.clone()),
        response: Set(task.response.as_ref().map(to_json_text).transpose()?),
        callback_succeeded: Set(task.callback_succeeded),
        audits: Set(to_json_text(&audits)?),
        customer_review_status: Set(task.customer_review_status.clone()),
        clear_unique_id_on_error: Set(task.clear_unique_id_on_error),
        created_at: Set(task.created_at.millis()),
        updated_at: Set(task.updated_at.millis()),
        updated_hour: Set(hour_of(task.updated_at)),
        completed_at: Set(task.completed_at.map(Timestamp::millis)),
        project_param_version: Set(task.project_param_version),
        lease_token_hash: Set(task.lease.as_ref().map(|lease| lease.token_hash.clone())),
        lease_expires_at: Set(task.lease.as_ref().map(|lease| lease.expires_at.millis())),
    })
}

/// `tasks::Entity::find()` with its column list written once, not per statement: sea-query
/// quotes each of the column names anew (two allocations each) for every statement. The
/// same text, columns in the same order (a test compares the two statements).
pub(super) fn find_tasks() -> sea_orm::Select<tasks::Entity> {
    static COLUMNS: LazyLock<String> = LazyLock::new(|| {
        tasks::Column::iter()
            .map(|column| format!("\"tasks\".\"{}\"", column.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    });
    tasks::Entity::find()
        .select_only()
        .expr(Expr::cust(COLUMNS.as_str()))
}

/// A task row decoded by position rather than by name. [`find_tasks`] selects the
/// columns in declaration order (extra expressions, such as a page's total, come after them);
/// by name, each column of every row cost a formatted name, a hash lookup and a
/// string compare: about a tenth of a list page's CPU.
pub(super) struct TaskRow(tasks::Model);

impl TaskRow {
    pub(super) fn into_task(self) -> Result<Task> {
        from_model(self.0)
    }
}

impl FromQueryResult for TaskRow {
    fn from_query_result(row: &sea_orm::QueryResult, pre: &str) -> Result<Self, sea_orm::DbErr> {
        let decoded = match (row.try_as_pg_row(), row.try_as_sqlite_row()) {
            // A prefixed (joined) select has other columns first: go by name.
            _ if !pre.is_empty() => return tasks::Model::from_query_result(row, pre).map(TaskRow),
            (Some(row), _) => model_in_column_order(row),
            (_, Some(row)) => model_in_column_order(row),
            _ => return tasks::Model::from_query_result(row, pre).map(TaskRow),
        };
        decoded
            .map(TaskRow)
            .map_err(|err| sea_orm::DbErr::Type(err.to_string()))
    }
}

/// Straight from the driver's row: sea-orm reads a NULL as an error carrying the column's
/// index formatted as text, then turns it into `None`, and a task row has up to a dozen NULLs.
/// In `tasks::Column` order; the test below holds the two together.
fn model_in_column_order<'r, R>(row: &'r R) -> Result<tasks::Model, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(tasks::Model {
        task_id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        is_test: row.try_get(2)?,
        task_type: row.try_get(3)?,
        status: row.try_get(4)?,
        instruction: row.try_get(5)?,
        params: row.try_get(6)?,
        callback_url: row.try_get(7)?,
        metadata: row.try_get(8)?,
        unique_id: row.try_get(9)?,
        tags: row.try_get(10)?,
        project: row.try_get(11)?,
        batch: row.try_get(12)?,
        response: row.try_get(13)?,
        callback_succeeded: row.try_get(14)?,
        audits: row.try_get(15)?,
        customer_review_status: row.try_get(16)?,
        clear_unique_id_on_error: row.try_get(17)?,
        created_at: row.try_get(18)?,
        updated_at: row.try_get(19)?,
        completed_at: row.try_get(20)?,
        lease_token_hash: row.try_get(21)?,
        lease_expires_at: row.try_get(22)?,
        project_param_version: row.try_get(23)?,
        updated_hour: row.try_get(24)?,
    })
}

pub(super) fn from_model(row: tasks::Model) -> Result<Task> {
    let id = TaskId::parse(&row.task_id).ok_or_else(|| {
        tracing::error!(task_id = %row.task_id, "stored task id is malformed");
        Error::Internal
    })?;
    let status = TaskStatus::parse(&row.status).ok_or_else(|| {
        tracing::error!(status = %row.status, "stored task status is unknown");
        Error::Internal
    })?;
    let audits: Vec<StoredAudit> = from_json_text(&row.audits, "audits")?;
    Ok(Task {
        id,
        scope: Scope {
            account_id: row.account_id,
            is_test: row.is_test,
        },
        task_type: row.task_type,
        status,
        instruction: row.instruction,
        params: stored_object(row.params, "params")?,
        callback_url: row.callback_url,
        metadata: stored_object(row.metadata, "metadata")?,
        unique_id: row.unique_id,
        tags: row
            .tags
            .as_deref()
            .map(|text| from_json_text(text, "tags"))
            .transpose()?,
        project: row.project,
        project_param_version: row.project_param_version,
        batch: row.batch,
        response: row
            .response
            .as_deref()
            .map(|text| from_json_text(text, "response"))
            .transpose()?,
        callback_succeeded: row.callback_succeeded,
        audits: audits
            .into_iter()
            .map(|audit| Audit {
                accepted: audit.accepted,
                comments: audit.comments,
                created_at: Timestamp::from_millis(audit.created_at),
            })
            .collect(),
        customer_review_status: row.customer_review_status,
        clear_unique_id_on_error: row.clear_unique_id_on_error,
        created_at: Timestamp::from_millis(row.created_at),
        updated_at: Timestamp::from_millis(row.updated_at),
        completed_at: row.completed_at.map(Timestamp::from_millis),
        lease: match (row.lease_token_hash, row.lease_expires_at) {
            (Some(token_hash), Some(expires_at)) => Some(TaskLease {
                token_hash,
                expires_at: Timestamp::from_millis(expires_at),
            }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::{
        build_get_task_statement, find_tasks, get_task_statement, statement_sized_chunks, tasks,
        DbBackend, EntityTrait, Iden, Iterable, QueryTrait, Scope, TaskId, Timestamp,
    };

    /// `TaskRow` reads by position: the select must list the columns in the order it reads.
    #[test]
    fn task_rows_are_selected_in_the_order_they_are_decoded() {
        let decoded = [
            "task_id",
            "account_id",
            "is_test",
            "task_type",
            "status",
            "instruction",
            "params",
            "callback_url",
            "metadata",
            "unique_id",
            "tags",
            "project",
            "batch",
            "response",
            "callback_succeeded",
            "audits",
            "customer_review_status",
            "clear_unique_id_on_error",
            "created_at",
            "updated_at",
            "completed_at",
            "lease_token_hash",
            "lease_expires_at",
            "project_param_version",
            "updated_hour",
        ];
        let declared: Vec<String> = tasks::Column::iter()
            .map(|column| column.to_string())
            .collect();
        assert_eq!(declared, decoded);
        let sql = tasks::Entity::find().build(DbBackend::Sqlite).to_string();
        let selected: Vec<&str> = sql["SELECT ".len()..sql.find(" FROM ").expect("FROM")]
            .split(", ")
            .map(|column| {
                column
                    .rsplit('.')
                    .next()
                    .unwrap_or(column)
                    .trim_matches('"')
            })
            .collect();
        assert_eq!(selected, decoded, "{sql}");
    }

    #[test]
    fn the_column_list_written_once_is_the_builders() {
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            assert_eq!(
                find_tasks().build(backend),
                tasks::Entity::find().build(backend)
            );
        }
    }

    #[test]
    fn the_get_statement_written_once_matches_the_builders() {
        let scopes = [
            Scope {
                account_id: 7,
                is_test: false,
            },
            Scope {
                account_id: 42,
                is_test: true,
            },
        ];
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            for (n, scope) in scopes.into_iter().enumerate() {
                let id = TaskId::generate(Timestamp::from_millis(1_700_000_000_000 + n as i64));
                assert_eq!(
                    get_task_statement(backend, scope, &id),
                    build_get_task_statement(backend, scope, &id),
                );
            }
        }
    }

    #[test]
    fn chunks_are_powers_of_two_covering_every_item_in_order() {
        for len in 0..1100 {
            let items: Vec<usize> = (0..len).collect();
            let chunks = statement_sized_chunks(&items, 512);
            assert!(chunks
                .iter()
                .all(|chunk| chunk.len().is_power_of_two() && chunk.len() <= 512));
            assert_eq!(chunks.concat(), items);
        }
    }
}
