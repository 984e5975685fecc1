//! The counters behind exact list totals, kept in the transaction of every task write.
//!
//! A write collects what it adds to and removes from each counter row ([`CounterDeltas`]) and
//! applies them at once. Every create of an account touches the same few counter keys, whose
//! row locks are then held until commit: on PostgreSQL each key has a row per shard and each
//! transaction writes to the next shard in turn, so concurrent writers rarely queue on the
//! same rows, and all four tables are upserted in one statement.

use std::collections::BTreeMap;

use sea_orm::{
    sea_query::{Expr, OnConflict},
    ActiveValue::Set,
    ConnectionTrait, DbBackend, EntityTrait, Iterable, Statement,
};
use serde::Serialize;

use super::{
    entities::{task_counts, task_event_hour_counts, task_hour_counts, task_tag_counts},
    one_statement::{sqlite_json_field, sqlite_json_rows, sqlite_row_was_created},
    tasks::{statement_sized_chunks, to_json_text, ROWS_PER_INSERT},
};
use crate::{
    domain::{Task, Timestamp},
    error::Result,
};

pub(super) const HOUR_MILLIS: i64 = 3_600_000;

/// Rows per counter key on PostgreSQL. Each transaction writes its counters to one shard, in
/// turn, so concurrent writers of one account rarely wait on each other's counter rows (held
/// until commit). SQLite has one writer and keeps one row per key.
const POSTGRES_COUNTER_SHARDS: usize = 8;

/// The PostgreSQL shard a transaction's counter rows go to.
pub(super) fn next_shard() -> i32 {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    i32::try_from(turn % POSTGRES_COUNTER_SHARDS).unwrap_or(0)
}

/// The whole hours since the epoch of `at`: the hour counters' unit.
pub(super) fn hour_of(at: Timestamp) -> i64 {
    at.millis().div_euclid(HOUR_MILLIS)
}

/// What a `task_event_hour_counts` row counts (migration 10).
pub(super) const COMPLETED_EVENT: &str = "completed";
/// Update-hour shifts against the creation-hour counters (migration 10).
pub(super) const UPDATED_EVENT: &str = "updated";

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

/// A `task_event_hour_counts` key: the event, its hour and the `task_counts` key.
type EventKey = (&'static str, i64, CountKey);

/// The counter rows `task` counts in, each with what the task adds to it.
struct CounterKeys {
    total: CountKey,
    /// Its creation hour's.
    hour: (i64, CountKey),
    /// One per distinct tag.
    tags: Vec<TagKey>,
    /// Its completion hour's, once completed; and when it was last updated in another hour
    /// than it was created in, +1 at its update hour and -1 at its creation hour (so the
    /// creation-hour counters plus these shifts count tasks by update hour).
    events: Vec<(EventKey, i64)>,
}

fn counter_keys(task: &Task) -> CounterKeys {
    let total = CountKey::of(task);
    let created = hour_of(task.created_at);
    let mut events = Vec::new();
    if let Some(completed_at) = task.completed_at {
        events.push(((COMPLETED_EVENT, hour_of(completed_at), total.clone()), 1));
    }
    let updated = hour_of(task.updated_at);
    if updated != created {
        events.push(((UPDATED_EVENT, updated, total.clone()), 1));
        events.push(((UPDATED_EVENT, created, total.clone()), -1));
    }
    let hour = (created, total.clone());
    let distinct: std::collections::BTreeSet<&String> = task.tags.iter().flatten().collect();
    let tags = distinct
        .into_iter()
        .map(|tag| TagKey {
            account_id: task.scope.account_id,
            is_test: task.scope.is_test,
            tag: tag.clone(),
            status: task.status.as_str(),
        })
        .collect();
    CounterKeys {
        total,
        hour,
        tags,
        events,
    }
}

/// How many tasks a write adds to (or, negative, removes from) each counter row. Ordered
/// maps, so concurrent writers lock counter rows in one order and never deadlock.
#[derive(Debug, Default)]
pub(super) struct CounterDeltas {
    totals: BTreeMap<CountKey, i64>,
    hours: BTreeMap<(i64, CountKey), i64>,
    tags: BTreeMap<TagKey, i64>,
    events: BTreeMap<EventKey, i64>,
}

impl CounterDeltas {
    /// Counts `task` `delta` times in each of its counter rows ([`counter_keys`]).
    pub(super) fn add(&mut self, task: &Task, delta: i64) {
        let keys = counter_keys(task);
        *self.hours.entry(keys.hour).or_default() += delta;
        *self.totals.entry(keys.total).or_default() += delta;
        for tag in keys.tags {
            *self.tags.entry(tag).or_default() += delta;
        }
        for (event, times) in keys.events {
            *self.events.entry(event).or_default() += delta * times;
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
        self.events.retain(|_, delta| *delta != 0);
    }

    fn is_empty(&self) -> bool {
        self.totals.is_empty()
            && self.hours.is_empty()
            && self.tags.is_empty()
            && self.events.is_empty()
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

    /// PostgreSQL: the four upserts as data-modifying CTEs of one statement, each reading its
    /// rows from a JSON array (one statement shape, whatever the number of rows).
    async fn apply_in_one_statement(self, txn: &impl ConnectionTrait) -> Result<()> {
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            UPSERT_ALL_COUNTERS.as_str(),
            self.summed_rows(next_shard())?.map(Into::into),
        ))
        .await?;
        Ok(())
    }

    /// The rows as the JSON parameters of [`CounterRows::Summed`], one per counter table, each
    /// in key order.
    fn summed_rows(&self, shard: i32) -> Result<[String; COUNTER_TABLE_COUNT]> {
        let totals: Vec<_> = self
            .totals
            .iter()
            .map(|(key, &total)| JsonCounterRow::summed(key, shard, total))
            .collect();
        let hours: Vec<_> = self
            .hours
            .iter()
            .map(|((created_hour, key), &total)| {
                let key = HourKey {
                    created_hour: *created_hour,
                    key,
                };
                JsonCounterRow::summed(key, shard, total)
            })
            .collect();
        let tags: Vec<_> = self
            .tags
            .iter()
            .map(|(key, &total)| JsonCounterRow::summed(key, shard, total))
            .collect();
        let events: Vec<_> = self
            .events
            .iter()
            .map(|((event, hour, key), &total)| {
                let key = EventKeyRow {
                    event,
                    hour: *hour,
                    key,
                };
                JsonCounterRow::summed(key, shard, total)
            })
            .collect();
        Ok([
            to_json_text(&totals)?,
            to_json_text(&hours)?,
            to_json_text(&tags)?,
            to_json_text(&events)?,
        ])
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
                shard: Set(0),
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
                    shard: Set(0),
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
                shard: Set(0),
                total: Set(total),
            })
            .collect();
        let events: Vec<_> = self
            .events
            .into_iter()
            .map(
                |((event, hour, key), total)| task_event_hour_counts::ActiveModel {
                    account_id: Set(key.account_id),
                    is_test: Set(key.is_test),
                    event: Set(event.to_owned()),
                    hour: Set(hour),
                    project: Set(key.project),
                    batch: Set(key.batch),
                    task_type: Set(key.task_type),
                    status: Set(key.status.to_owned()),
                    shard: Set(0),
                    total: Set(total),
                },
            )
            .collect();
        upsert_adding::<task_counts::Entity, _>(txn, totals, task_counts::Column::Total).await?;
        upsert_adding::<task_hour_counts::Entity, _>(txn, hours, task_hour_counts::Column::Total)
            .await?;
        upsert_adding::<task_tag_counts::Entity, _>(txn, tags, task_tag_counts::Column::Total)
            .await?;
        upsert_adding::<task_event_hour_counts::Entity, _>(
            txn,
            events,
            task_event_hour_counts::Column::Total,
        )
        .await
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

/// One JSON row of a counter upsert (see [`counter_upsert_ctes`]): a counter key, its shard
/// and what to add, with the task it counts when summed in SQL.
#[derive(Serialize)]
struct JsonCounterRow<'a, K> {
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(flatten)]
    key: K,
    shard: i32,
    total: i64,
}

impl<'a, K> JsonCounterRow<'a, K> {
    /// A row of a [`CounterDeltas`]: `total` added to the key's row.
    fn summed(key: K, shard: i32, total: i64) -> Self {
        JsonCounterRow {
            task_id: None,
            key,
            shard,
            total,
        }
    }

    /// A new task counted `total` times in the key's row, if the statement created it.
    fn of_task(task_id: &'a str, key: K, shard: i32, total: i64) -> Self {
        JsonCounterRow {
            task_id: Some(task_id),
            key,
            shard,
            total,
        }
    }
}

/// A `task_hour_counts` key: the creation hour and the `task_counts` key.
#[derive(Serialize)]
struct HourKey<K> {
    created_hour: i64,
    #[serde(flatten)]
    key: K,
}

/// A `task_event_hour_counts` key as a JSON row.
#[derive(Serialize)]
struct EventKeyRow<K> {
    event: &'static str,
    hour: i64,
    #[serde(flatten)]
    key: K,
}

/// A counter table: its name, the CTE that upserts it, and its key columns (with their SQL
/// types) in the order the key's Rust `Ord` compares them.
struct CounterTable {
    table: &'static str,
    cte: &'static str,
    key: &'static [(&'static str, &'static str)],
}

impl CounterTable {
    /// The key's columns, each written by `each` from its name and PostgreSQL type, joined by
    /// commas.
    fn key_list(&self, each: impl Fn(&str, &str) -> String) -> String {
        self.key
            .iter()
            .map(|(column, sql_type)| each(column, sql_type))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How many counter tables there are: the counter upserts read one JSON parameter each.
pub(super) const COUNTER_TABLE_COUNT: usize = COUNTER_TABLES.len();

const COUNTER_TABLES: [CounterTable; 4] = [
    CounterTable {
        table: "task_counts",
        cte: "totals",
        key: &[
            ("account_id", "bigint"),
            ("is_test", "boolean"),
            ("project", "text"),
            ("batch", "text"),
            ("task_type", "text"),
            ("status", "text"),
            ("shard", "integer"),
        ],
    },
    CounterTable {
        table: "task_hour_counts",
        cte: "hours",
        key: &[
            ("created_hour", "bigint"),
            ("account_id", "bigint"),
            ("is_test", "boolean"),
            ("project", "text"),
            ("batch", "text"),
            ("task_type", "text"),
            ("status", "text"),
            ("shard", "integer"),
        ],
    },
    CounterTable {
        table: "task_tag_counts",
        cte: "tags",
        key: &[
            ("account_id", "bigint"),
            ("is_test", "boolean"),
            ("tag", "text"),
            ("status", "text"),
            ("shard", "integer"),
        ],
    },
    CounterTable {
        table: "task_event_hour_counts",
        cte: "events",
        key: &[
            ("event", "text"),
            ("hour", "bigint"),
            ("account_id", "bigint"),
            ("is_test", "boolean"),
            ("project", "text"),
            ("batch", "text"),
            ("task_type", "text"),
            ("status", "text"),
            ("shard", "integer"),
        ],
    },
];

/// Where a counter upsert's rows come from.
#[derive(Clone, Copy)]
pub(super) enum CounterRows {
    /// Summed rows, one per counter row, already in key order (a [`CounterDeltas`]).
    Summed,
    /// One row per task and counter row, with the task's id ([`created_task_counter_rows`]):
    /// only the tasks the statement's `created` CTE returns are counted, summed in SQL.
    PerCreatedTask,
}

/// The counter upserts as data-modifying CTEs (`totals`, `hours`, `tags`, `events`), reading
/// their rows from the JSON parameters `$first_param` on, one per table. Rows are upserted in
/// key order (byte order for text, as Rust compares them), so every writer locks counter rows
/// in one order.
pub(super) fn counter_upsert_ctes(rows: CounterRows, first_param: usize) -> String {
    let mut ctes = Vec::new();
    for (offset, counter) in COUNTER_TABLES.iter().enumerate() {
        let param = first_param + offset;
        let columns = counter.key_list(|column, _| column.to_owned());
        let typed = counter.key_list(|column, sql_type| format!("{column} {sql_type}"));
        let source = match rows {
            CounterRows::Summed => format!(
                "SELECT {columns}, total FROM json_to_recordset(${param}::json) \
                 AS r({typed}, total bigint)"
            ),
            CounterRows::PerCreatedTask => {
                let in_key_order = counter.key_list(|column, sql_type| match sql_type {
                    "text" => format!("{column} COLLATE \"C\""),
                    _ => column.to_owned(),
                });
                format!(
                    "SELECT {columns}, SUM(total)::bigint FROM json_to_recordset(${param}::json) \
                     AS r(task_id text, {typed}, total bigint) JOIN created USING (task_id) \
                     GROUP BY {columns} ORDER BY {in_key_order}"
                )
            }
        };
        ctes.push(format!(
            "{cte} AS (INSERT INTO {table} ({columns}, total) {source} \
             ON CONFLICT ({columns}) DO UPDATE SET total = {table}.total + excluded.total \
             RETURNING 1)",
            cte = counter.cte,
            table = counter.table,
        ));
    }
    ctes.join(", ")
}

/// SQLite: the counter upserts as statements of one multi-statement text, each reading its
/// rows from its one JSON parameter, in table order (shard 0). [`CounterRows::PerCreatedTask`]
/// counts only the tasks that exist by then: task ids are new, so a task row with one is a
/// task the same text just created (one refused for its unique_id is not there).
pub(super) fn sqlite_counter_upserts_of_new_tasks(rows: CounterRows) -> Vec<String> {
    COUNTER_TABLES
        .iter()
        .map(|counter| {
            let columns = counter.key_list(|column, _| column.to_owned());
            let extracted =
                counter.key_list(|column, _| format!("{} AS {column}", sqlite_json_field(column)));
            let source = match rows {
                CounterRows::Summed => format!(
                    "SELECT {extracted}, {total} AS total FROM r WHERE true",
                    total = sqlite_json_field("total"),
                ),
                CounterRows::PerCreatedTask => format!(
                    "SELECT {columns}, SUM(total) FROM (\
                       SELECT {extracted}, {total} AS total FROM r \
                       WHERE {created}\
                     ) WHERE true GROUP BY {columns}",
                    total = sqlite_json_field("total"),
                    created = sqlite_row_was_created(),
                ),
            };
            format!(
                "{rows}INSERT INTO {table} ({columns}, total) {source} \
                 ON CONFLICT ({columns}) DO UPDATE SET total = {table}.total + excluded.total",
                rows = sqlite_json_rows(),
                table = counter.table,
            )
        })
        .collect()
}

static UPSERT_ALL_COUNTERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {} SELECT 1",
        counter_upsert_ctes(CounterRows::Summed, 1)
    )
});

/// What new tasks add to the counters, summed, as the JSON parameters of [`CounterRows::Summed`]:
/// for tasks that are all created if the statement succeeds (none has a unique_id to refuse it).
pub(super) fn summed_counter_rows_of_new_tasks<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    shard: i32,
) -> Result<[String; COUNTER_TABLE_COUNT]> {
    let mut deltas = CounterDeltas::default();
    for task in tasks {
        deltas.add(task, 1);
    }
    deltas.drop_zeros();
    deltas.summed_rows(shard)
}

/// The counter rows of new tasks, one per task and counter row, as the JSON parameters of
/// [`CounterRows::PerCreatedTask`], one per counter table.
pub(super) fn created_task_counter_rows<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    shard: i32,
) -> Result<[String; COUNTER_TABLE_COUNT]> {
    let (mut totals, mut hours, mut tags) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = Vec::new();
    for task in tasks {
        let task_id = task.id.as_str();
        let keys = counter_keys(task);
        totals.push(JsonCounterRow::of_task(task_id, keys.total, shard, 1));
        let (created_hour, key) = keys.hour;
        let key = HourKey { created_hour, key };
        hours.push(JsonCounterRow::of_task(task_id, key, shard, 1));
        tags.extend(
            keys.tags
                .into_iter()
                .map(|key| JsonCounterRow::of_task(task_id, key, shard, 1)),
        );
        events.extend(keys.events.into_iter().map(|((event, hour, key), total)| {
            let key = EventKeyRow { event, hour, key };
            JsonCounterRow::of_task(task_id, key, shard, total)
        }));
    }
    Ok([
        to_json_text(&totals)?,
        to_json_text(&hours)?,
        to_json_text(&tags)?,
        to_json_text(&events)?,
    ])
}
