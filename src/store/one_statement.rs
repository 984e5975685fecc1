//! PostgreSQL: new tasks, with everything they write (tag rows, callbacks, counters, the change
//! log and, under Idempotency-Keys, the keys' answers), inserted by one statement: a create
//! group's whole implicit transaction, or one statement of a transaction where a group needs
//! one (keys already stored, to be looked up under their locks).
//!
//! A group commit of creates was six round trips (BEGIN, tasks, tags, counters, change log,
//! COMMIT), and the account's counter rows stayed locked from the counter upsert to the end of
//! COMMIT, so the other committer's group waited through those round trips too. As one
//! statement it is one round trip, and the counter locks are held for the statement's tail and
//! its commit only. Tasks refused for their unique_id are left out of every other row by joining
//! on what the task insert returned; a group is first written without those joins, by a
//! statement that a taken unique_id or stored Idempotency-Key fails whole (see
//! [`INSERT_NEW_TASKS_NONE_REFUSED`]). Tasks in a batch take the transaction path: a batch's
//! status is settled from the counters after they are written. Imports keep their multi-row
//! inserts too: 512 tasks per transaction leave few round trips to save.
//!
//! SQLite: the same rows in one multi-statement text ([`SQLITE_INSERT_NEW_TASKS`]) inside the
//! caller's transaction, for every group of new tasks outside batches, imports included: its
//! cost is hand-offs to sqlx's one writer thread, one per statement, not locks.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU32, Ordering},
        LazyLock,
    },
};

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, IdenStatic, Iterable, Statement,
    TransactionTrait, Value,
};

use super::{
    callbacks::delivery_row,
    counters::{
        counter_upsert_ctes, created_task_counter_rows, next_shard,
        sqlite_counter_upserts_of_new_tasks, summed_counter_rows_of_new_tasks, CounterRows,
        COUNTER_TABLE_COUNT,
    },
    entities::{callback_deliveries, idempotency_keys, task_tags, tasks},
    tasks::{to_active_model, to_json_text, BulkInserted},
    Store,
};
use crate::{
    domain::{CallbackSubject, NewDelivery, Task},
    error::{Error, Result},
};

/// `created` holds the ids the task insert returned; every other insert joins on it.
static INSERT_NEW_TASKS: LazyLock<String> =
    LazyLock::new(|| insert_new_tasks_sql(Refusals::ByUniqueId));

/// The same for tasks that are all created or none: the task insert has no `ON CONFLICT`, so a
/// taken unique_id (or a task id collision) fails the whole statement, and tag rows and
/// deliveries are inserted as they come and the counters take rows summed beforehand
/// ([`CounterRows::Summed`]). No join with `created`, no grouping: on a group of creates the
/// joins' hash tables and the counters' grouping were about a sixth of PostgreSQL's time
/// (BENCHMARKS.md). Certain to succeed for tasks without unique_ids; tried first for the others
/// (see [`Store::insert_new_tasks_on_pool`]).
static INSERT_NEW_TASKS_NONE_REFUSED: LazyLock<String> =
    LazyLock::new(|| insert_new_tasks_sql(Refusals::None));

/// The same under Idempotency-Keys (the last parameter, [`CLAIMS_PARAM`]: one claim per key,
/// the key's row with its answer, and the id of the task it creates, if any). The claims are
/// inserted first, and a key already stored (by an earlier request, expired or not, or by a
/// concurrent one, whose commit the insert waits for) is skipped with its task: the statement
/// returns the keys it claimed, and the caller sends the others down the transaction path,
/// which reads what is stored. No look-up of the keys table: a join there was planned as a scan
/// of the whole table once the plan cached while it was small. A claimed key's answer is its
/// task, created: only a unique_id could refuse the task, and tasks with one take the
/// transaction path.
static INSERT_NEW_TASKS_UNDER_KEYS: LazyLock<String> =
    LazyLock::new(|| insert_new_tasks_sql(Refusals::ByUniqueIdOrKey));

/// PostgreSQL: [`INSERT_NEW_TASKS_NONE_REFUSED`] that also stores each Idempotency-Key's
/// answer (the last parameter, [`CLAIMS_PARAM`]), for a group whose keys are all new and whose
/// unique_ids are free, as they almost always are: no join, no grouping. A key stored already
/// (a replay, an expired key not yet swept, or a concurrent request's key, whose commit the
/// insert waits for) or a taken unique_id fails the whole statement with a unique violation, so
/// nothing is written and the group takes [`INSERT_NEW_TASKS_UNDER_KEYS`] or a transaction. The
/// price of a replay is that failed statement, and PostgreSQL logs it as an error.
static INSERT_NEW_TASKS_UNDER_NEW_KEYS: LazyLock<String> =
    LazyLock::new(|| insert_new_tasks_sql(Refusals::NoneUnderNewKeys));

/// What may keep a task of the statement from being created.
#[derive(Clone, Copy, PartialEq)]
enum Refusals {
    /// Nothing: a taken unique_id fails the statement.
    None,
    /// Nothing either, under Idempotency-Keys: a key stored already fails the statement too.
    NoneUnderNewKeys,
    /// Another task holding its unique_id.
    ByUniqueId,
    /// That, or its Idempotency-Key stored already.
    ByUniqueIdOrKey,
}

/// The statements' first counter parameter, after the tasks, tag rows and deliveries.
const FIRST_COUNTER_PARAM: usize = 4;
/// The claims' parameter, after the counters'.
const CLAIMS_PARAM: usize = FIRST_COUNTER_PARAM + COUNTER_TABLE_COUNT;

fn insert_new_tasks_sql(refusals: Refusals) -> String {
    let columns_of = |columns: Vec<String>, prefix: &str| {
        columns
            .iter()
            .map(|column| format!("{prefix}{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let delivery_columns = callback_deliveries::Column::iter()
        .filter(|column| !matches!(column, callback_deliveries::Column::Id))
        .map(|column| column.as_str().to_owned())
        .collect::<Vec<_>>();
    let key_columns = idempotency_keys::Column::iter()
        .map(|column| column.as_str().to_owned())
        .collect::<Vec<_>>();
    let (claims, not_deferred, answer) = if refusals == Refusals::ByUniqueIdOrKey {
        (
            format!(
                "claims AS (\
                   SELECT r.*, e ->> 'task_id' AS task_id \
                   FROM json_array_elements(${CLAIMS_PARAM}::json) AS e, \
                   json_populate_record(NULL::idempotency_keys, e) AS r\
                 ), claimed AS (\
                   INSERT INTO idempotency_keys ({columns}) SELECT {c_columns} FROM claims AS c \
                   ORDER BY c.idempotency_key COLLATE \"C\" \
                   ON CONFLICT DO NOTHING RETURNING idempotency_key\
                 ), ",
                columns = key_columns.join(", "),
                c_columns = columns_of(key_columns.clone(), "c."),
            ),
            " WHERE NOT EXISTS (SELECT 1 FROM claims AS c WHERE c.task_id = t.task_id) \
              OR t.task_id IN (SELECT c.task_id FROM claims AS c JOIN claimed USING (idempotency_key))",
            "SELECT task_id, NULL AS idempotency_key FROM created \
             UNION ALL SELECT NULL, idempotency_key FROM claimed"
                .to_owned(),
        )
    } else if refusals == Refusals::NoneUnderNewKeys {
        (
            format!(
                "claimed AS (\
                   INSERT INTO idempotency_keys ({columns}) SELECT {c_columns} \
                   FROM json_populate_recordset(NULL::idempotency_keys, ${CLAIMS_PARAM}::json) AS c \
                   ORDER BY c.idempotency_key COLLATE \"C\" RETURNING 1\
                 ), ",
                columns = key_columns.join(", "),
                c_columns = columns_of(key_columns.clone(), "c."),
            ),
            "",
            "SELECT task_id FROM created".to_owned(),
        )
    } else {
        (String::new(), "", "SELECT task_id FROM created".to_owned())
    };
    // Rows of the other tables are only those of created tasks, unless all are created.
    let (on_conflict, of_created, counter_rows) = match refusals {
        Refusals::None | Refusals::NoneUnderNewKeys => ("", "", CounterRows::Summed),
        _ => (
            " ON CONFLICT DO NOTHING",
            " JOIN created USING (task_id)",
            CounterRows::PerCreatedTask,
        ),
    };
    format!(
        "WITH {claims}created AS (\
           INSERT INTO tasks SELECT t.* FROM json_populate_recordset(NULL::tasks, $1::json) AS t\
           {not_deferred}{on_conflict} RETURNING task_id\
         ), tag_rows AS (\
           INSERT INTO task_tags (task_id, tag, account_id, is_test) \
           SELECT r.task_id, r.tag, r.account_id, r.is_test \
           FROM json_populate_recordset(NULL::task_tags, $2::json) AS r{of_created} \
           RETURNING 1\
         ), deliveries AS (\
           INSERT INTO callback_deliveries ({columns}) SELECT {r_columns} \
           FROM json_populate_recordset(NULL::callback_deliveries, $3::json) AS r\
           {of_created} RETURNING 1\
         ), {counters}, logged AS (\
           INSERT INTO task_change_log (xid, changes) \
           SELECT pg_current_xact_id()::text::bigint, string_agg('c' || task_id, ',' ORDER BY task_id) \
           FROM created HAVING COUNT(*) > 0 RETURNING 1\
         ) {answer}",
        columns = delivery_columns.join(", "),
        r_columns = columns_of(delivery_columns.clone(), "r."),
        counters = counter_upsert_ctes(counter_rows, FIRST_COUNTER_PARAM),
    )
}

/// SQLite: the same rows in one multi-statement text, so the writer thread gets them in one
/// round trip (each statement sent on its own is a hand-off to that thread and back: a group
/// of creates was about ten of them). Every statement reads its rows from one JSON parameter,
/// so the text is the same whatever the group's size and stays prepared. Tags, deliveries and
/// counters are written only for tasks that exist once the task insert has run: their ids are
/// new, so those are the tasks it created.
///
/// Each statement has exactly one parameter, an anonymous `?`: sqlx binds a text's arguments to
/// its statements' anonymous parameters in order, so statement N reads argument N. (A numbered
/// `?N` would not do: the N − 1 slots below it count as anonymous ones and use up arguments.)
static SQLITE_INSERT_NEW_TASKS: LazyLock<String> =
    LazyLock::new(|| sqlite_insert_new_tasks_sql(Refusals::ByUniqueId));

/// The same for tasks none of which has a unique_id (see [`INSERT_NEW_TASKS_NONE_REFUSED`]):
/// no look-up of each row's task, counters from rows summed beforehand. (SQLite's creates
/// with unique_ids take the look-ups: they cost little there, and a failed text would.)
static SQLITE_INSERT_NEW_TASKS_NONE_REFUSED: LazyLock<String> =
    LazyLock::new(|| sqlite_insert_new_tasks_sql(Refusals::None));

/// The same under Idempotency-Keys that are all new (see [`INSERT_NEW_TASKS_UNDER_NEW_KEYS`]),
/// with one statement more, last, storing the keys' answers: a key stored already or a taken
/// unique_id fails it, and the caller rolls the transaction back.
static SQLITE_INSERT_NEW_TASKS_UNDER_NEW_KEYS: LazyLock<String> =
    LazyLock::new(|| sqlite_insert_new_tasks_sql(Refusals::NoneUnderNewKeys));

fn sqlite_insert_new_tasks_sql(refusals: Refusals) -> String {
    let (tasks_tail, of_created, counter_rows) = match refusals {
        Refusals::None | Refusals::NoneUnderNewKeys => (
            "true RETURNING task_id",
            "true".to_owned(),
            CounterRows::Summed,
        ),
        _ => (
            "true ON CONFLICT DO NOTHING RETURNING task_id",
            sqlite_row_was_created(),
            CounterRows::PerCreatedTask,
        ),
    };
    let mut statements = vec![
        sqlite_insert_from_json(
            "tasks",
            tasks::Column::iter().map(|column| column.as_str().to_owned()),
            tasks_tail,
        ),
        sqlite_insert_from_json(
            "task_tags",
            task_tags::Column::iter().map(|column| column.as_str().to_owned()),
            &of_created,
        ),
        sqlite_insert_from_json(
            "callback_deliveries",
            callback_deliveries::Column::iter()
                .filter(|column| !matches!(column, callback_deliveries::Column::Id))
                .map(|column| column.as_str().to_owned()),
            &of_created,
        ),
    ];
    statements.extend(sqlite_counter_upserts_of_new_tasks(counter_rows));
    if refusals == Refusals::NoneUnderNewKeys {
        statements.push(sqlite_insert_from_json(
            "idempotency_keys",
            idempotency_keys::Column::iter().map(|column| column.as_str().to_owned()),
            "true",
        ));
    }
    statements.join(";\n")
}

/// `INSERT INTO table (columns)` of the rows of the statement's JSON array parameter that meet
/// `condition`, as [`sqlite_json_field`] reads them.
fn sqlite_insert_from_json(
    table: &str,
    columns: impl Iterator<Item = String>,
    condition: &str,
) -> String {
    let columns: Vec<String> = columns.collect();
    let extracted = columns
        .iter()
        .map(|column| sqlite_json_field(column))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{rows}INSERT INTO {table} ({columns}) SELECT {extracted} FROM r WHERE {condition}",
        rows = sqlite_json_rows(),
        columns = columns.join(", "),
    )
}

/// The rows of the statement's one parameter (a JSON array) as the table `r`, each row's
/// object as JSONB (SQLite 3.46 has no `jsonb_each`): converted once and kept, not rebuilt for
/// every field read (with `json_each` alone each row is JSON text, built anew and parsed again
/// for every field read from it, and reading fields by path from the parameter instead
/// compared the parameter's whole text with SQLite's parse cache on every read: either way
/// SQLite's writer spent more time on JSON than on inserting).
pub(super) fn sqlite_json_rows() -> &'static str {
    "WITH r AS MATERIALIZED (SELECT jsonb(value) AS value FROM json_each(?)) "
}

/// Field `name` of a row of [`sqlite_json_rows`] as an SQL value: a JSON string as text, a
/// number or boolean as an integer, null as NULL.
pub(super) fn sqlite_json_field(name: &str) -> String {
    format!("r.value ->> '{name}'")
}

/// Whether the task of row `r` exists.
pub(super) fn sqlite_row_was_created() -> String {
    format!(
        "EXISTS (SELECT 1 FROM tasks AS t WHERE t.task_id = {})",
        sqlite_json_field("task_id")
    )
}

/// Inserts new tasks on SQLite inside `txn` in one round trip (see
/// [`SQLITE_INSERT_NEW_TASKS`]); tasks refused for their unique_id are answered with the
/// holder. Only for tasks [`rows_can_be_inserted_together`] accepts.
pub(super) async fn sqlite_insert_new_tasks(
    txn: &impl ConnectionTrait,
    items: &[(Task, Option<NewDelivery>)],
) -> Result<Vec<BulkInserted>> {
    let none_refused = items.iter().all(|(task, _)| task.unique_id.is_none());
    let (sql, counters) = if none_refused {
        (&SQLITE_INSERT_NEW_TASKS_NONE_REFUSED, CounterRows::Summed)
    } else {
        (&SQLITE_INSERT_NEW_TASKS, CounterRows::PerCreatedTask)
    };
    // One writer, one row per counter key: SQLite keeps every counter in shard 0.
    let statement = Statement::from_sql_and_values(
        DbBackend::Sqlite,
        sql.as_str(),
        new_task_values(items, 0, counters)?,
    );
    let created = created_task_ids(txn, statement).await?;
    unique_id_outcomes(txn, items.iter().map(|(task, _)| task), &created).await
}

/// Runs an insert of new tasks that returns the `task_id` of each task it created.
async fn created_task_ids(
    db: &impl ConnectionTrait,
    statement: Statement,
) -> Result<HashSet<String>> {
    let rows = db.query_all(statement).await?;
    let created = rows
        .iter()
        .map(|row| row.try_get::<String>("", "task_id"))
        .collect::<std::result::Result<HashSet<_>, _>>()?;
    Ok(created)
}

/// Whether new tasks can be written by the statements above: none in a batch (a batch's status
/// is settled from its counters after they are written), and every callback delivery about
/// its own task.
pub(super) fn rows_can_be_inserted_together(items: &[(Task, Option<NewDelivery>)]) -> bool {
    items.iter().all(|(task, delivery)| {
        task.batch.is_none()
            && delivery.as_ref().is_none_or(|delivery| {
                matches!(&delivery.subject, CallbackSubject::Task(subject) if subject.id == task.id)
            })
    })
}

/// What the statement under keys did: the tasks it created and the keys it stored.
pub(super) struct InsertedUnderKeys {
    pub created: HashSet<String>,
    pub claimed: HashSet<String>,
}

/// Create groups written the careful way after an optimistic statement failed on a conflict.
/// A client re-sending tasks whose unique_ids or keys are all taken would otherwise pay a failed
/// statement (and a line of PostgreSQL's log) for every group; now for one group in 65.
const CAREFUL_GROUPS_AFTER_A_CONFLICT: u32 = 64;

/// Counts down the groups to write the careful way after a conflict.
#[derive(Default)]
pub(super) struct CarefulAfterConflicts(AtomicU32);

impl CarefulAfterConflicts {
    /// Whether a group whose unique_ids or Idempotency-Keys may be taken may be written by a
    /// statement that fails on a conflict (and is then written the careful way): yes, unless a
    /// conflict was met within the last [`CAREFUL_GROUPS_AFTER_A_CONFLICT`] such groups.
    pub(super) fn may_write_optimistically(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err()
    }

    /// An optimistic statement failed on a conflict.
    pub(super) fn met_a_conflict(&self) {
        self.0
            .store(CAREFUL_GROUPS_AFTER_A_CONFLICT, Ordering::Relaxed);
    }
}

impl Store {
    /// New tasks on the pool, in one statement (see [`Store::insert_new_tasks_in_one_statement`]).
    /// Tasks with unique_ids are first tried in the statement of tasks nothing can refuse, as
    /// unique_ids are almost never taken: one taken fails it, and the joining statement follows.
    pub(super) async fn insert_new_tasks_on_pool(
        &self,
        items: &[(Task, Option<NewDelivery>)],
    ) -> Result<Vec<BulkInserted>> {
        let with_unique_ids = items.iter().any(|(task, _)| task.unique_id.is_some());
        if with_unique_ids && self.careful.may_write_optimistically() {
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT_NEW_TASKS_NONE_REFUSED.as_str(),
                new_task_values(items, next_shard(), CounterRows::Summed)?,
            );
            if self.written_unless_a_conflict(&self.db, statement).await? {
                self.change_log_written.notify_one();
                return Ok(vec![BulkInserted::Created; items.len()]);
            }
        }
        self.insert_new_tasks_in_one_statement(&self.db, items)
            .await
    }

    /// Runs a statement that a taken unique_id or stored key fails whole: `false` if one did
    /// (then it wrote nothing, and the next groups are written the careful way for a while).
    async fn written_unless_a_conflict(
        &self,
        db: &impl ConnectionTrait,
        statement: Statement,
    ) -> Result<bool> {
        match db.query_all(statement).await {
            Ok(_) => Ok(true),
            Err(err) if super::is_unique_violation(&err) => {
                self.careful.met_a_conflict();
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Whether [`Store::insert_new_tasks_in_one_statement`] can take these tasks.
    pub(super) fn can_insert_in_one_statement(
        &self,
        items: &[(Task, Option<NewDelivery>)],
    ) -> bool {
        self.is_postgres() && rows_can_be_inserted_together(items)
    }

    /// Inserts new tasks (see the module): each is created, or refused because another task
    /// holds its unique_id. On the pool the statement commits them; in a transaction (creates
    /// under Idempotency-Keys that take the transaction path) they commit with it, change-log
    /// row included, and the caller wakes the feed once it has committed.
    pub(super) async fn insert_new_tasks_in_one_statement(
        &self,
        db: &impl ConnectionTrait,
        items: &[(Task, Option<NewDelivery>)],
    ) -> Result<Vec<BulkInserted>> {
        let none_refused = items.iter().all(|(task, _)| task.unique_id.is_none());
        let (sql, counters) = if none_refused {
            (&INSERT_NEW_TASKS_NONE_REFUSED, CounterRows::Summed)
        } else {
            (&INSERT_NEW_TASKS, CounterRows::PerCreatedTask)
        };
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql.as_str(),
            new_task_values(items, next_shard(), counters)?,
        );
        let created = created_task_ids(db, statement).await?;
        if !created.is_empty() {
            self.change_log_written.notify_one();
        }
        unique_id_outcomes(db, items.iter().map(|(task, _)| task), &created).await
    }

    /// Inserts new tasks and stores their keys' answers, in one statement on the pool (see
    /// [`INSERT_NEW_TASKS_UNDER_KEYS`]): `claims` are the keys' rows, each with the id of the
    /// task it creates, if any.
    pub(super) async fn insert_new_tasks_under_keys(
        &self,
        items: &[(Task, Option<NewDelivery>)],
        claims: &[(idempotency_keys::ActiveModel, Option<String>)],
    ) -> Result<InsertedUnderKeys> {
        let mut values = new_task_values(items, next_shard(), CounterRows::PerCreatedTask)?;
        let mut claim_rows = Vec::with_capacity(claims.len());
        for (record, task_id) in claims {
            let mut row = row_json(record)?;
            row.insert("task_id".to_owned(), task_id.clone().into());
            claim_rows.push(row);
        }
        values.push(to_json_text(&claim_rows)?.into());
        let rows = self
            .db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT_NEW_TASKS_UNDER_KEYS.as_str(),
                values,
            ))
            .await?;
        let mut inserted = InsertedUnderKeys {
            created: HashSet::new(),
            claimed: HashSet::new(),
        };
        for row in &rows {
            if let Some(task_id) = row.try_get::<Option<String>>("", "task_id")? {
                inserted.created.insert(task_id);
            }
            if let Some(key) = row.try_get::<Option<String>>("", "idempotency_key")? {
                inserted.claimed.insert(key);
            }
        }
        if !inserted.created.is_empty() {
            self.change_log_written.notify_one();
        }
        Ok(inserted)
    }

    /// Inserts new tasks and stores each Idempotency-Key's answer, in one statement
    /// (PostgreSQL) or one text in a transaction (SQLite): every task is created and every key
    /// stored, or, when a key was stored already or a unique_id taken, nothing is written and
    /// this answers `false`.
    pub(super) async fn insert_new_tasks_under_new_keys(
        &self,
        items: &[(Task, Option<NewDelivery>)],
        claims: &[idempotency_keys::ActiveModel],
    ) -> Result<bool> {
        let postgres = self.is_postgres();
        let shard = if postgres { next_shard() } else { 0 };
        let mut values = new_task_values(items, shard, CounterRows::Summed)?;
        let claim_rows = claims.iter().map(row_json).collect::<Result<Vec<_>>>()?;
        values.push(to_json_text(&claim_rows)?.into());
        if postgres {
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT_NEW_TASKS_UNDER_NEW_KEYS.as_str(),
                values,
            );
            let written = self.written_unless_a_conflict(&self.db, statement).await?;
            if written && !items.is_empty() {
                self.change_log_written.notify_one();
            }
            return Ok(written);
        }
        let txn = self.db.begin().await?;
        let statement = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            SQLITE_INSERT_NEW_TASKS_UNDER_NEW_KEYS.as_str(),
            values,
        );
        if !self.written_unless_a_conflict(&txn, statement).await? {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
        let all_created = vec![BulkInserted::Created; items.len()];
        self.commit_with_changes(
            txn,
            super::tasks::created_changes(items.iter().map(|(task, _)| task), &all_created),
        )
        .await?;
        Ok(true)
    }
}

/// The statements' parameters up to the claims: the tasks, their tag rows, their callback
/// deliveries and their counter rows, per task or summed.
fn new_task_values(
    items: &[(Task, Option<NewDelivery>)],
    shard: i32,
    counters: CounterRows,
) -> Result<Vec<Value>> {
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
    let mut values: Vec<Value> = vec![
        to_json_text(&task_rows)?.into(),
        to_json_text(&tag_rows)?.into(),
        to_json_text(&delivery_rows)?.into(),
    ];
    let tasks = items.iter().map(|(task, _)| task);
    let counter_rows = match counters {
        CounterRows::PerCreatedTask => created_task_counter_rows(tasks, shard)?,
        CounterRows::Summed => summed_counter_rows_of_new_tasks(tasks, shard)?,
    };
    values.extend(counter_rows.into_iter().map(Value::from));
    Ok(values)
}

/// Each task's outcome: created if its id is in `created`, otherwise refused for its
/// unique_id, with the holder's id.
pub(super) async fn unique_id_outcomes<'a>(
    db: &impl ConnectionTrait,
    tasks: impl Iterator<Item = &'a Task>,
    created: &HashSet<String>,
) -> Result<Vec<BulkInserted>> {
    let mut outcomes = Vec::new();
    for task in tasks {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_conflict_groups_are_written_carefully_for_a_while() {
        let careful = CarefulAfterConflicts::default();
        assert!(careful.may_write_optimistically());
        assert!(careful.may_write_optimistically());
        careful.met_a_conflict();
        for _ in 0..CAREFUL_GROUPS_AFTER_A_CONFLICT {
            assert!(!careful.may_write_optimistically());
        }
        assert!(careful.may_write_optimistically());
    }

    /// sqlx binds NULL, silently, to a parameter left without an argument: the SQLite text must
    /// have exactly one anonymous `?` per argument, each statement one.
    #[test]
    fn the_sqlite_text_has_one_parameter_per_argument_in_every_statement() {
        let arguments = 3 + COUNTER_TABLE_COUNT;
        for (text, claims) in [
            (&SQLITE_INSERT_NEW_TASKS, 0),
            (&SQLITE_INSERT_NEW_TASKS_NONE_REFUSED, 0),
            (&SQLITE_INSERT_NEW_TASKS_UNDER_NEW_KEYS, 1),
        ] {
            let statements: Vec<&str> = text.split(";\n").collect();
            assert_eq!(statements.len(), arguments + claims);
            for statement in statements {
                let parameters: Vec<&str> = statement
                    .match_indices('?')
                    .map(|(at, _)| &statement[at..])
                    .collect();
                assert_eq!(parameters.len(), 1, "{statement}");
                assert!(
                    parameters[0][1..].starts_with(|next: char| !next.is_ascii_alphanumeric()),
                    "a numbered or named parameter: {statement}"
                );
            }
        }
        for counters in [CounterRows::PerCreatedTask, CounterRows::Summed] {
            let values = new_task_values(&[], 0, counters)
                .map_err(|_| "no values")
                .unwrap();
            assert_eq!(values.len(), arguments);
        }
    }
}
