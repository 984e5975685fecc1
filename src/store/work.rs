//! The work queue's claim: the oldest pending tasks with no live lease, each leased at once.

use sea_orm::{
    sea_query::{Expr, LockBehavior, LockType, Query},
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::{
    entities::{batches, tasks},
    tasks::{filter_condition, from_model},
    Store,
};
use crate::{
    domain::{BatchStatus, ClaimFilter, Scope, Task, TaskFilter, TaskLease, TaskStatus, Timestamp},
    error::Result,
};

impl Store {
    /// Leases up to `leases.len()` available tasks, oldest first, one lease each, in one
    /// transaction. On PostgreSQL `FOR UPDATE SKIP LOCKED` lets concurrent claimers (on any
    /// replica) pass each other's rows instead of taking them twice; SQLite has one writer.
    pub async fn claim_tasks(
        &self,
        scope: Scope,
        filter: &ClaimFilter,
        now: Timestamp,
        leases: Vec<TaskLease>,
    ) -> Result<Vec<Task>> {
        let txn = self.db.begin().await?;
        // The list's own filter for the pending tasks asked for, then only the unleased ones.
        let pending = TaskFilter {
            status: Some(TaskStatus::Pending),
            project: filter.project.clone(),
            batch: filter.batch.clone(),
            task_type: filter.task_type.clone(),
            ..TaskFilter::default()
        };
        let mut condition = filter_condition(scope, &pending).add(
            Condition::any()
                .add(tasks::Column::LeaseExpiresAt.is_null())
                .add(tasks::Column::LeaseExpiresAt.lte(now.millis())),
        );
        // A staging batch's tasks wait until it is finalized.
        let staging = Query::select()
            .column(batches::Column::Name)
            .from(batches::Entity)
            .and_where(batches::Column::AccountId.eq(scope.account_id))
            .and_where(batches::Column::IsTest.eq(scope.is_test))
            .and_where(batches::Column::Status.eq(BatchStatus::Staging.as_str()))
            .to_owned();
        condition = condition.add(
            Condition::any()
                .add(tasks::Column::Batch.is_null())
                .add(tasks::Column::Batch.not_in_subquery(staging)),
        );
        let mut select = tasks::Entity::find()
            .filter(condition)
            .order_by_asc(tasks::Column::CreatedAt)
            .order_by_asc(tasks::Column::TaskId)
            .limit(leases.len() as u64);
        if self.is_postgres() {
            select = select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = select.all(&txn).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for (row, lease) in rows.into_iter().zip(leases) {
            tasks::Entity::update_many()
                .col_expr(
                    tasks::Column::LeaseTokenHash,
                    Expr::value(lease.token_hash.clone()),
                )
                .col_expr(
                    tasks::Column::LeaseExpiresAt,
                    Expr::value(lease.expires_at.millis()),
                )
                .filter(tasks::Column::TaskId.eq(row.task_id.as_str()))
                .exec(&txn)
                .await?;
            let mut task = from_model(row)?;
            task.lease = Some(lease);
            claimed.push(task);
        }
        txn.commit().await?;
        Ok(claimed)
    }

    /// Live leases and available pending tasks over every account, for the queue metrics.
    pub async fn queue_gauges(&self, now: Timestamp) -> Result<(u64, u64)> {
        let leased = tasks::Entity::find()
            .filter(tasks::Column::LeaseExpiresAt.gt(now.millis()))
            .filter(tasks::Column::Status.eq(TaskStatus::Pending.as_str()));
        let leased = sea_orm::PaginatorTrait::count(leased, &self.read).await?;
        let pending = self.count_all_pending().await?;
        Ok((pending.saturating_sub(leased), leased))
    }
}
