//! Batches, their status counts, and the status they move to as their tasks finish.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::{
    entities::{batches, task_counts},
    is_unique_violation,
    tasks::{counter_sum, from_json_text, to_json_text},
    Store,
};
use crate::{
    domain::{
        Batch, BatchCounts, BatchFilter, BatchStatus, NewDelivery, Scope, TaskStatus, Timestamp,
    },
    error::{Error, Result},
};

/// What the service makes of a batch that has just completed: its callback, if any.
pub type OnBatchCompleted<'a> = &'a (dyn Fn(&Batch) -> Option<NewDelivery> + Sync);

pub(super) fn not_found(name: &str) -> Error {
    Error::NotFound(format!("No batch named '{name}'."))
}

fn scope_condition(scope: Scope) -> Condition {
    Condition::all()
        .add(batches::Column::AccountId.eq(scope.account_id))
        .add(batches::Column::IsTest.eq(scope.is_test))
}

impl Store {
    pub async fn insert_batch(&self, batch: &Batch) -> Result<()> {
        let row = batches::ActiveModel {
            account_id: Set(batch.scope.account_id),
            is_test: Set(batch.scope.is_test),
            name: Set(batch.name.clone()),
            project: Set(batch.project.clone()),
            status: Set(batch.status.as_str().to_owned()),
            callback: Set(batch.callback.clone()),
            metadata: Set(to_json_text(&batch.metadata)?),
            created_at: Set(batch.created_at.millis()),
            updated_at: Set(batch.updated_at.millis()),
            completed_at: Set(batch.completed_at.map(Timestamp::millis)),
            ..Default::default()
        };
        match batches::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(Error::Conflict(format!(
                "A batch named '{}' already exists.",
                batch.name
            ))),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_batch(&self, scope: Scope, name: &str) -> Result<Option<Batch>> {
        batches::Entity::find()
            .filter(scope_condition(scope))
            .filter(batches::Column::Name.eq(name))
            .one(&self.read)
            .await?
            .map(from_row)
            .transpose()
    }

    /// Newest first, `offset` rows skipped; and how many match in all.
    pub async fn list_batches(
        &self,
        scope: Scope,
        filter: &BatchFilter,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Batch>, u64)> {
        let mut condition = scope_condition(scope);
        if let Some(project) = &filter.project {
            condition = condition.add(batches::Column::Project.eq(project.as_str()));
        }
        if let Some(status) = filter.status {
            condition = condition.add(batches::Column::Status.eq(status.as_str()));
        }
        if let Some(from) = filter.created.from {
            condition = condition.add(batches::Column::CreatedAt.gte(from.millis()));
        }
        if let Some(to) = filter.created.to {
            condition = condition.add(batches::Column::CreatedAt.lte(to.millis()));
        }
        let docs = batches::Entity::find()
            .filter(condition.clone())
            .order_by_desc(batches::Column::CreatedAt)
            .order_by_desc(batches::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(from_row)
            .collect::<Result<Vec<_>>>()?;
        let total = batches::Entity::find()
            .filter(condition)
            .count(&self.read)
            .await?;
        Ok((docs, total))
    }

    pub async fn batch_counts(&self, scope: Scope, name: &str) -> Result<BatchCounts> {
        batch_counts(&self.read, scope, name).await
    }

    /// Applies `change` under the batch's row lock, then moves its status as its tasks call
    /// for (a finalized batch whose tasks are all done completes at once).
    pub async fn update_batch<F>(
        &self,
        scope: Scope,
        name: &str,
        change: F,
        on_completed: OnBatchCompleted<'_>,
    ) -> Result<Batch>
    where
        F: FnOnce(&mut Batch) -> Result<()>,
    {
        let txn = self.db.begin().await?;
        let (id, mut batch) = lock_batch(&txn, scope, name)
            .await?
            .ok_or_else(|| not_found(name))?;
        let before = batch.clone();
        change(&mut batch)?;
        if batch != before {
            batch.updated_at = Timestamp::now().max(before.updated_at);
        }
        let batch = settle(&txn, id, batch, &before, on_completed).await?;
        txn.commit().await?;
        Ok(batch)
    }
}

/// After a change to one of its tasks: moves the batch's status as its counts call for.
/// The batch row is locked first, so tasks finishing at once on any replica are counted one
/// after the other and exactly one of them completes the batch.
pub(super) async fn refresh_batch(
    txn: &DatabaseTransaction,
    scope: Scope,
    name: &str,
    on_completed: OnBatchCompleted<'_>,
) -> Result<()> {
    let Some((id, batch)) = lock_batch(txn, scope, name).await? else {
        // Tasks from before batches existed may name one that was never created.
        return Ok(());
    };
    let before = batch.clone();
    settle(txn, id, batch, &before, on_completed).await?;
    Ok(())
}

async fn lock_batch(
    txn: &DatabaseTransaction,
    scope: Scope,
    name: &str,
) -> Result<Option<(i64, Batch)>> {
    let Some(row) = batches::Entity::find()
        .filter(scope_condition(scope))
        .filter(batches::Column::Name.eq(name))
        .lock_exclusive()
        .one(txn)
        .await?
    else {
        return Ok(None);
    };
    let id = row.id;
    Ok(Some((id, from_row(row)?)))
}

/// Moves `batch` to the status its counts call for and writes it if anything changed; a
/// batch that has just completed gets its callback in the same transaction.
async fn settle(
    txn: &DatabaseTransaction,
    id: i64,
    mut batch: Batch,
    before: &Batch,
    on_completed: OnBatchCompleted<'_>,
) -> Result<Batch> {
    let counts = batch_counts(txn, batch.scope, &batch.name).await?;
    let status = batch.status_for(&counts);
    let now = Timestamp::now();
    if status != batch.status {
        batch.status = status;
        batch.completed_at = (status == BatchStatus::Completed).then_some(now);
        batch.updated_at = now.max(batch.updated_at);
    }
    if batch == *before {
        return Ok(batch);
    }
    batches::Entity::update(batches::ActiveModel {
        id: Set(id),
        status: Set(batch.status.as_str().to_owned()),
        metadata: Set(to_json_text(&batch.metadata)?),
        updated_at: Set(batch.updated_at.millis()),
        completed_at: Set(batch.completed_at.map(Timestamp::millis)),
        ..Default::default()
    })
    .exec(txn)
    .await?;
    if batch.status == BatchStatus::Completed && before.status != BatchStatus::Completed {
        if let Some(callback) = on_completed(&batch) {
            super::callbacks::insert_delivery(txn, &callback).await?;
        }
    }
    Ok(batch)
}

/// Read from the per-status counters kept with every task write: the cost does not grow
/// with the batch.
async fn batch_counts(db: &impl ConnectionTrait, scope: Scope, name: &str) -> Result<BatchCounts> {
    let rows: Vec<(String, Option<i64>)> = task_counts::Entity::find()
        .select_only()
        .column(task_counts::Column::Status)
        .column_as(counter_sum(), "total")
        .filter(task_counts::Column::AccountId.eq(scope.account_id))
        .filter(task_counts::Column::IsTest.eq(scope.is_test))
        .filter(task_counts::Column::Batch.eq(name))
        .group_by(task_counts::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let mut counts = BatchCounts::default();
    for (status, total) in rows {
        let total = total.unwrap_or(0).max(0).unsigned_abs();
        match TaskStatus::parse(&status) {
            Some(TaskStatus::Pending) => counts.pending = total,
            Some(TaskStatus::Completed) => counts.completed = total,
            Some(TaskStatus::Error) => counts.error = total,
            Some(TaskStatus::Canceled) => counts.canceled = total,
            None => tracing::error!(%status, "stored counter status is unknown"),
        }
    }
    Ok(counts)
}

fn from_row(row: batches::Model) -> Result<Batch> {
    let status = BatchStatus::parse(&row.status).ok_or_else(|| {
        tracing::error!(status = %row.status, "stored batch status is unknown");
        Error::Internal
    })?;
    Ok(Batch {
        scope: Scope {
            account_id: row.account_id,
            is_test: row.is_test,
        },
        name: row.name,
        project: row.project,
        status,
        callback: row.callback,
        metadata: from_json_text(&row.metadata, "metadata")?,
        created_at: Timestamp::from_millis(row.created_at),
        updated_at: Timestamp::from_millis(row.updated_at),
        completed_at: row.completed_at.map(Timestamp::from_millis),
    })
}
