//! PostgreSQL: new tasks, with everything they write (tag rows, callbacks, counters, the change
//! log), inserted by one statement: a create group's whole implicit transaction, or, under
//! Idempotency-Keys, one statement of the group's transaction.
//!
//! A group commit of creates was six round trips (BEGIN, tasks, tags, counters, change log,
//! COMMIT), and the account's counter rows stayed locked from the counter upsert to the end of
//! COMMIT, so the other committer's group waited through those round trips too. As one
//! statement it is one round trip, and the counter locks are held for the statement's tail and
//! its commit only. Tasks refused for their unique_id are left out of every other row by joining
//! on what the task insert returned. Tasks in a batch take the transaction path: a batch's
//! status is settled from the counters after they are written. Imports keep their multi-row
//! inserts too: 500 tasks per transaction leave few round trips to save.

use std::sync::LazyLock;

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, IdenStatic, Iterable, Statement,
    Value,
};

use super::{
    callbacks::delivery_row,
    counters::{counter_upsert_ctes, created_task_counter_rows, next_shard, CounterRows},
    entities::{callback_deliveries, task_tags},
    tasks::{to_active_model, to_json_text, BulkInserted},
    Store,
};
use crate::{
    domain::{CallbackSubject, NewDelivery, Task},
    error::{Error, Result},
};

/// `created` holds the ids the task insert returned; every other insert joins on it.
static INSERT_NEW_TASKS: LazyLock<String> = LazyLock::new(|| {
    let delivery_columns = callback_deliveries::Column::iter()
        .filter(|column| !matches!(column, callback_deliveries::Column::Id))
        .map(|column| column.as_str().to_owned())
        .collect::<Vec<_>>();
    format!(
        "WITH created AS (\
           INSERT INTO tasks SELECT * FROM json_populate_recordset(NULL::tasks, $1::json) \
           ON CONFLICT DO NOTHING RETURNING task_id\
         ), tag_rows AS (\
           INSERT INTO task_tags (task_id, tag, account_id, is_test) \
           SELECT r.task_id, r.tag, r.account_id, r.is_test \
           FROM json_populate_recordset(NULL::task_tags, $2::json) AS r JOIN created USING (task_id) \
           RETURNING 1\
         ), deliveries AS (\
           INSERT INTO callback_deliveries ({columns}) SELECT {r_columns} \
           FROM json_populate_recordset(NULL::callback_deliveries, $3::json) AS r \
           JOIN created USING (task_id) RETURNING 1\
         ), {counters}, logged AS (\
           INSERT INTO task_change_log (xid, changes) \
           SELECT pg_current_xact_id()::text::bigint, string_agg('c' || task_id, ',' ORDER BY task_id) \
           FROM created HAVING COUNT(*) > 0 RETURNING 1\
         ) \
         SELECT task_id FROM created",
        columns = delivery_columns.join(", "),
        r_columns = delivery_columns
            .iter()
            .map(|column| format!("r.{column}"))
            .collect::<Vec<_>>()
            .join(", "),
        counters = counter_upsert_ctes(CounterRows::PerCreatedTask, 4),
    )
});

impl Store {
    /// Whether [`Store::insert_new_tasks_in_one_statement`] can take these tasks.
    pub(super) fn can_insert_in_one_statement(
        &self,
        items: &[(Task, Option<NewDelivery>)],
    ) -> bool {
        self.is_postgres()
            && items.iter().all(|(task, delivery)| {
                task.batch.is_none()
                    && delivery.as_ref().is_none_or(|delivery| {
                        matches!(&delivery.subject, CallbackSubject::Task(subject) if subject.id == task.id)
                    })
            })
    }

    /// Inserts new tasks (see the module): each is created, or refused because another task
    /// holds its unique_id. On the pool the statement commits them; in a transaction (creates
    /// under Idempotency-Keys) they commit with it, change-log row included, and the caller
    /// wakes the feed once it has committed.
    pub(super) async fn insert_new_tasks_in_one_statement(
        &self,
        db: &impl ConnectionTrait,
        items: &[(Task, Option<NewDelivery>)],
    ) -> Result<Vec<BulkInserted>> {
        // Unique_id index entries are locked in one order by every writer.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| items[a].0.unique_id.cmp(&items[b].0.unique_id));
        let mut task_rows = Vec::with_capacity(items.len());
        let mut tag_rows = Vec::new();
        let mut delivery_rows = Vec::new();
        for &index in &order {
            let (task, delivery) = &items[index];
            task_rows.push(row_json(&to_active_model(task)?)?);
            for tag in task.tags.iter().flatten() {
                tag_rows.push(row_json(&task_tags::ActiveModel {
                    task_id: sea_orm::Set(task.id.to_string()),
                    tag: sea_orm::Set(tag.clone()),
                    account_id: sea_orm::Set(task.scope.account_id),
                    is_test: sea_orm::Set(task.scope.is_test),
                })?);
            }
            if let Some(delivery) = delivery {
                delivery_rows.push(row_json(&delivery_row(delivery)?)?);
            }
        }
        let [totals, hours, tags] =
            created_task_counter_rows(items.iter().map(|(task, _)| task), next_shard())?;
        let rows = db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT_NEW_TASKS.as_str(),
                [
                    to_json_text(&task_rows)?.into(),
                    to_json_text(&tag_rows)?.into(),
                    to_json_text(&delivery_rows)?.into(),
                    totals.into(),
                    hours.into(),
                    tags.into(),
                ],
            ))
            .await?;
        let created = rows
            .iter()
            .map(|row| row.try_get::<String>("", "task_id"))
            .collect::<Result<std::collections::HashSet<String>, _>>()?;
        if !created.is_empty() {
            self.change_log_written.notify_one();
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for (task, _) in items {
            if created.contains(task.id.as_str()) {
                outcomes.push(BulkInserted::Created);
                continue;
            }
            let Some(unique_id) = &task.unique_id else {
                // Only a unique_id can conflict; a task id collision would be a bug.
                tracing::error!(task_id = %task.id, "a task without unique_id was not inserted");
                return Err(Error::Internal);
            };
            // Committed before, or written by this statement (seen on `db`): the holder is there
            // to find, unless it let go of the unique_id meanwhile, and then a retry succeeds.
            // On the pool the group is committed by now, so a failed look-up must not fail the
            // tasks that were created.
            let holder = super::tasks::find_task_id_by_unique_id(db, task.scope, unique_id)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "looking up a unique_id's holder failed");
                    None
                })
                .unwrap_or_default();
            outcomes.push(BulkInserted::Duplicate { holder });
        }
        Ok(outcomes)
    }
}

/// A row as a JSON object of its set columns, for `json_populate_recordset` (a text column
/// from a JSON string, NULL from null; columns left unset are absent, and so NULL).
fn row_json<A: ActiveModelTrait>(model: &A) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::Value as Json;
    let mut row = serde_json::Map::new();
    for column in <A::Entity as EntityTrait>::Column::iter() {
        let Some(value) = model.get(column).into_value() else {
            continue;
        };
        let json = match value {
            Value::Bool(value) => value.map_or(Json::Null, Json::from),
            Value::Int(value) => value.map_or(Json::Null, Json::from),
            Value::BigInt(value) => value.map_or(Json::Null, Json::from),
            Value::String(value) => value.map_or(Json::Null, |text| Json::String(*text)),
            other => {
                tracing::error!(
                    ?other,
                    "a column value of this type cannot be written as JSON"
                );
                return Err(Error::Internal);
            }
        };
        row.insert(column.as_str().to_owned(), json);
    }
    Ok(row)
}
