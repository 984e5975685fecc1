//! The counters behind exact list totals, kept in the transaction of every task write.
//!
//! A write collects what it adds to and removes from each counter row ([`CounterDeltas`]) and
//! applies them at once. Every create of an account touches the same few counter rows, whose
//! row locks are then held until commit, so concurrent group commits queue on them: on
//! PostgreSQL all three tables are upserted in one statement (one round trip inside that
//! window instead of three or more).

use std::collections::BTreeMap;

use sea_orm::{
    sea_query::{Expr, OnConflict},
    ActiveValue::Set,
    ConnectionTrait, DbBackend, EntityTrait, Iterable, Statement,
};
use serde::Serialize;

use super::{
    entities::{task_counts, task_hour_counts, task_tag_counts},
    tasks::{statement_sized_chunks, to_json_text, ROWS_PER_INSERT},
};
use crate::{
    domain::{Task, Timestamp},
    error::Result,
};

pub(super) const HOUR_MILLIS: i64 = 3_600_000;

pub(super) fn created_hour(at: Timestamp) -> i64 {
    at.millis().div_euclid(HOUR_MILLIS)
}

/// A counter row of `task_counts`: (account, world, project, batch, type, status), with
/// empty strings for no project or batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct CountKey {
    account_id: i64,
    is_test: bool,
    project: String,
    batch: String,
    task_type: String,
    status: &'static str,
}

impl CountKey {
    fn of(task: &Task) -> Self {
        CountKey {
            account_id: task.scope.account_id,
            is_test: task.scope.is_test,
            project: task.project.clone().unwrap_or_default(),
            batch: task.batch.clone().unwrap_or_default(),
            task_type: task.task_type.clone(),
            status: task.status.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct TagKey {
    account_id: i64,
    is_test: bool,
    tag: String,
    status: &'static str,
}

/// How many tasks a write adds to (or, negative, removes from) each counter row. Ordered
/// maps, so concurrent writers lock counter rows in one order and never deadlock.
#[derive(Debug, Default)]
pub(super) struct CounterDeltas {
    totals: BTreeMap<CountKey, i64>,
    hours: BTreeMap<(i64, CountKey), i64>,
    tags: BTreeMap<TagKey, i64>,
}

impl CounterDeltas {
    /// Counts `task` `delta` times: its totals, its creation hour's, and once per distinct tag.
    pub(super) fn add(&mut self, task: &Task, delta: i64) {
        let key = CountKey::of(task);
        *self
            .hours
            .entry((created_hour(task.created_at), key.clone()))
            .or_default() += delta;
        *self.totals.entry(key).or_default() += delta;
        let tags: std::collections::BTreeSet<&String> = task.tags.iter().flatten().collect();
        for tag in tags {
            *self
                .tags
                .entry(TagKey {
                    account_id: task.scope.account_id,
                    is_test: task.scope.is_test,
                    tag: tag.clone(),
                    status: task.status.as_str(),
                })
                .or_default() += delta;
        }
    }

    /// A change from `before` to `after`: rows both count in cancel out.
    pub(super) fn change(&mut self, before: &Task, after: &Task) {
        self.add(before, -1);
        self.add(after, 1);
    }

    fn drop_zeros(&mut self) {
        self.totals.retain(|_, delta| *delta != 0);
        self.hours.retain(|_, delta| *delta != 0);
        self.tags.retain(|_, delta| *delta != 0);
    }

    fn is_empty(&self) -> bool {
        self.totals.is_empty() && self.hours.is_empty() && self.tags.is_empty()
    }

    pub(super) async fn apply(mut self, txn: &impl ConnectionTrait) -> Result<()> {
        self.drop_zeros();
        if self.is_empty() {
            return Ok(());
        }
        match txn.get_database_backend() {
            DbBackend::Postgres => self.apply_in_one_statement(txn).await,
            _ => self.apply_table_by_table(txn).await,
        }
    }

    /// PostgreSQL: the three upserts as data-modifying CTEs of one statement, each reading its
    /// rows from a JSON array (one statement shape, whatever the number of rows).
    async fn apply_in_one_statement(self, txn: &impl ConnectionTrait) -> Result<()> {
        #[derive(Serialize)]
        struct HourRow<'a> {
            created_hour: i64,
            #[serde(flatten)]
            key: &'a CountKey,
            total: i64,
        }
        #[derive(Serialize)]
        struct Row<'a, K> {
            #[serde(flatten)]
            key: &'a K,
            total: i64,
        }
        let totals: Vec<_> = self
            .totals
            .iter()
            .map(|(key, &total)| Row { key, total })
            .collect();
        let hours: Vec<_> = self
            .hours
            .iter()
            .map(|((created_hour, key), &total)| HourRow {
                created_hour: *created_hour,
                key,
                total,
            })
            .collect();
        let tags: Vec<_> = self
            .tags
            .iter()
            .map(|(key, &total)| Row { key, total })
            .collect();
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            UPSERT_ALL_COUNTERS,
            [
                to_json_text(&totals)?.into(),
                to_json_text(&hours)?.into(),
                to_json_text(&tags)?.into(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// SQLite (one writer, no round trips): one multi-row upsert per table.
    async fn apply_table_by_table(self, txn: &impl ConnectionTrait) -> Result<()> {
        let totals: Vec<_> = self
            .totals
            .into_iter()
            .map(|(key, total)| task_counts::ActiveModel {
                account_id: Set(key.account_id),
                is_test: Set(key.is_test),
                project: Set(key.project),
                batch: Set(key.batch),
                task_type: Set(key.task_type),
                status: Set(key.status.to_owned()),
                total: Set(total),
            })
            .collect();
        let hours: Vec<_> = self
            .hours
            .into_iter()
            .map(
                |((created_hour, key), total)| task_hour_counts::ActiveModel {
                    account_id: Set(key.account_id),
                    is_test: Set(key.is_test),
                    created_hour: Set(created_hour),
                    project: Set(key.project),
                    batch: Set(key.batch),
                    task_type: Set(key.task_type),
                    status: Set(key.status.to_owned()),
                    total: Set(total),
                },
            )
            .collect();
        let tags: Vec<_> = self
            .tags
            .into_iter()
            .map(|(key, total)| task_tag_counts::ActiveModel {
                account_id: Set(key.account_id),
                is_test: Set(key.is_test),
                tag: Set(key.tag),
                status: Set(key.status.to_owned()),
                total: Set(total),
            })
            .collect();
        upsert_adding::<task_counts::Entity, _>(txn, totals, task_counts::Column::Total).await?;
        upsert_adding::<task_hour_counts::Entity, _>(txn, hours, task_hour_counts::Column::Total)
            .await?;
        upsert_adding::<task_tag_counts::Entity, _>(txn, tags, task_tag_counts::Column::Total).await
    }
}

/// Inserts counter rows, adding each `total` to the stored one where the row exists.
async fn upsert_adding<E, A>(
    txn: &impl ConnectionTrait,
    rows: Vec<A>,
    total: E::Column,
) -> Result<()>
where
    E: EntityTrait,
    E::Model: sea_orm::IntoActiveModel<A>,
    A: sea_orm::ActiveModelTrait<Entity = E> + Clone + Send,
{
    for chunk in statement_sized_chunks(&rows, ROWS_PER_INSERT) {
        E::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns(E::PrimaryKey::iter())
                    .value(
                        total,
                        Expr::col((E::default(), total)).add(Expr::cust("excluded.total")),
                    )
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The rows of each CTE come in key order (the maps' order), so row locks are taken in one
/// order by every writer.
const UPSERT_ALL_COUNTERS: &str = "\
WITH totals AS (
  INSERT INTO task_counts (account_id, is_test, project, batch, task_type, status, total)
  SELECT account_id, is_test, project, batch, task_type, status, total
  FROM json_to_recordset($1::json) AS r(account_id bigint, is_test boolean, project text,
    batch text, task_type text, status text, total bigint)
  ON CONFLICT (account_id, is_test, project, batch, task_type, status)
  DO UPDATE SET total = task_counts.total + excluded.total
  RETURNING 1
), hours AS (
  INSERT INTO task_hour_counts
    (account_id, is_test, created_hour, project, batch, task_type, status, total)
  SELECT account_id, is_test, created_hour, project, batch, task_type, status, total
  FROM json_to_recordset($2::json) AS r(account_id bigint, is_test boolean, created_hour bigint,
    project text, batch text, task_type text, status text, total bigint)
  ON CONFLICT (account_id, is_test, created_hour, project, batch, task_type, status)
  DO UPDATE SET total = task_hour_counts.total + excluded.total
  RETURNING 1
), tags AS (
  INSERT INTO task_tag_counts (account_id, is_test, tag, status, total)
  SELECT account_id, is_test, tag, status, total
  FROM json_to_recordset($3::json) AS r(account_id bigint, is_test boolean, tag text,
    status text, total bigint)
  ON CONFLICT (account_id, is_test, tag, status)
  DO UPDATE SET total = task_tag_counts.total + excluded.total
  RETURNING 1
)
SELECT 1";
