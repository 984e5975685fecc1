//! Task creation in groups, with Idempotency-Keys: each key's record, its task and its stored
//! outcome commit together.

use sea_orm::{
    sea_query::Query, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    DbBackend, EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use sha2::{Digest, Sha256};

use super::{
    batches::OnBatchCompleted, entities::idempotency_keys, is_unique_violation, BulkInserted, Store,
};
use crate::{
    domain::{NewDelivery, Scope, Task, Timestamp},
    error::{Error, Result},
};

/// One create of a group commit.
pub struct NewTask {
    /// The task to insert with its due callback, or the validation error that answers it.
    pub prepared: Result<(Task, Option<NewDelivery>)>,
    /// Under an `Idempotency-Key`: the claim whose outcome is stored (or replayed).
    pub claim: Option<IdempotencyClaim>,
}

/// What a request claims under an `Idempotency-Key`.
pub struct IdempotencyClaim {
    pub key: String,
    pub scope: Scope,
    /// Hash of the request's method, path and canonical body.
    pub fingerprint: String,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// The answer to a creation, and whether it was replayed from an earlier request.
#[derive(Clone)]
pub struct StoredOutcome {
    pub outcome: Result<Task>,
    pub replayed: bool,
}

/// A key's stored record, for requests other than a single create (imports).
pub struct IdempotencyRecord {
    pub scope: Scope,
    pub fingerprint: String,
    /// The stored answer, as JSON.
    pub outcome: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Store {
    pub async fn find_idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>> {
        Ok(idempotency_keys::Entity::find_by_id(key)
            .one(&self.db)
            .await?
            .map(|row| IdempotencyRecord {
                scope: Scope {
                    account_id: row.account_id,
                    is_test: row.is_test,
                },
                fingerprint: row.fingerprint,
                outcome: row.outcome,
                created_at: Timestamp::from_millis(row.created_at),
                expires_at: Timestamp::from_millis(row.expires_at),
            }))
    }

    /// Stores `record` under `key`, replacing an expired record; if another request stored
    /// one in the meantime, that one stays (it answers replays from now on).
    pub async fn save_idempotency_record(
        &self,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<()> {
        let txn = self.db.begin().await?;
        idempotency_keys::Entity::delete_many()
            .filter(idempotency_keys::Column::IdempotencyKey.eq(key))
            .filter(idempotency_keys::Column::ExpiresAt.lte(record.created_at.millis()))
            .exec(&txn)
            .await?;
        let row = idempotency_keys::ActiveModel {
            idempotency_key: Set(key.to_owned()),
            account_id: Set(record.scope.account_id),
            is_test: Set(record.scope.is_test),
            fingerprint: Set(record.fingerprint.clone()),
            outcome: Set(record.outcome.clone()),
            created_at: Set(record.created_at.millis()),
            expires_at: Set(record.expires_at.millis()),
        };
        idempotency_keys::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(idempotency_keys::Column::IdempotencyKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Creates a group of tasks (group commit). Each item is a prepared task (or the validation
    /// error that is its answer) and, under an `Idempotency-Key`, its claim: a live key replays
    /// its stored outcome and creates nothing; otherwise the outcome (created task, unique_id
    /// conflict or validation error) is stored under the key in the same transaction as the
    /// task. Each item gets its own answer; a key held by a request in flight on another replica
    /// answers [`Error::IdempotencyInFlight`]. On PostgreSQL a group is one statement where it
    /// can be: items whose keys are already stored then take a transaction of their own.
    pub async fn create_tasks(
        &self,
        items: &[NewTask],
        on_batch_completed: OnBatchCompleted<'_>,
    ) -> Result<Vec<Result<StoredOutcome>>> {
        if items.iter().all(|item| item.claim.is_none()) {
            let mut answers = vec![None; items.len()];
            // No key to look up or store: the group is a bulk insert, in one statement where it
            // can be (an import's 500-task transactions keep their multi-row inserts: there the
            // round trips are few, and as one statement an import measured 7% slower).
            let (inserted_index, to_insert) = ready_to_insert(items, &mut answers);
            if !to_insert.is_empty() {
                let inserted = if self.can_insert_in_one_statement(&to_insert) {
                    self.insert_new_tasks_on_pool(&to_insert).await?
                } else {
                    self.insert_tasks(&to_insert, on_batch_completed).await?
                };
                record_inserted(&mut answers, inserted_index, to_insert, inserted);
            }
            return Ok(finish(answers));
        }
        if let Some(answers) = self.create_under_new_keys(items).await? {
            return Ok(finish(answers));
        }
        let all: Vec<&NewTask> = items.iter().collect();
        if !self.is_postgres() {
            return self.create_in_transaction(&all, on_batch_completed).await;
        }
        let Some(mut answers) = self.create_under_keys_in_one_statement(items).await? else {
            return self.create_in_transaction(&all, on_batch_completed).await;
        };
        let deferred: Vec<usize> = (0..items.len())
            .filter(|&index| answers[index].is_none())
            .collect();
        if !deferred.is_empty() {
            let rest: Vec<&NewTask> = deferred.iter().map(|&index| &items[index]).collect();
            // The statement has committed the others: a failure here is these items' alone.
            match self.create_in_transaction(&rest, on_batch_completed).await {
                Ok(outcomes) => {
                    for (index, outcome) in deferred.into_iter().zip(outcomes) {
                        answers[index] = Some(outcome);
                    }
                }
                Err(err) => {
                    for index in deferred {
                        answers[index] = Some(Err(err.clone()));
                    }
                }
            }
        }
        Ok(finish(answers))
    }

    /// The group in one transaction: the keys are locked (PostgreSQL) and looked up, live ones
    /// replay, expired ones are replaced, and the new answers are stored with the tasks.
    async fn create_in_transaction(
        &self,
        items: &[&NewTask],
        on_batch_completed: OnBatchCompleted<'_>,
    ) -> Result<Vec<Result<StoredOutcome>>> {
        let mut answers: Vec<Option<Result<StoredOutcome>>> = vec![None; items.len()];
        let txn = self.db.begin().await?;

        let keyed: Vec<usize> = (0..items.len())
            .filter(|&index| items[index].claim.is_some())
            .collect();
        let keys: Vec<&str> = keyed
            .iter()
            .filter_map(|&index| items[index].claim.as_ref())
            .map(|claim| claim.key.as_str())
            .collect();
        let locked = self.try_lock_keys(&txn, &keys).await?;
        let mut claimed = Vec::new();
        for (&index, locked) in keyed.iter().zip(locked) {
            if locked {
                claimed.push(index);
            } else {
                answers[index] = Some(Err(Error::IdempotencyInFlight));
            }
        }
        if !claimed.is_empty() {
            let keys = claimed
                .iter()
                .filter_map(|&index| items[index].claim.as_ref())
                .map(|claim| claim.key.clone());
            let rows = idempotency_keys::Entity::find()
                .filter(idempotency_keys::Column::IdempotencyKey.is_in(keys))
                .all(&txn)
                .await?;
            let mut expired = Vec::new();
            for row in rows {
                let Some(&index) = claimed.iter().find(|&&index| {
                    items[index]
                        .claim
                        .as_ref()
                        .is_some_and(|claim| claim.key == row.idempotency_key)
                }) else {
                    continue;
                };
                let Some(claim) = &items[index].claim else {
                    continue;
                };
                if row.expires_at > claim.now.millis() {
                    answers[index] = Some(replay(row, claim).map(|outcome| StoredOutcome {
                        outcome,
                        replayed: true,
                    }));
                } else {
                    expired.push(row.idempotency_key);
                }
            }
            if !expired.is_empty() {
                idempotency_keys::Entity::delete_many()
                    .filter(idempotency_keys::Column::IdempotencyKey.is_in(expired))
                    .exec(&txn)
                    .await?;
            }
        }

        let (inserted_index, to_insert) = ready_to_insert(items, &mut answers);
        let mut changes = Vec::new();
        let mut logged_in_statement = false;
        if !to_insert.is_empty() {
            let inserted = if self.can_insert_in_one_statement(&to_insert) {
                // Its change-log row is written by the statement itself.
                logged_in_statement = true;
                self.insert_new_tasks_in_one_statement(&txn, &to_insert)
                    .await?
            } else {
                let inserted =
                    super::tasks::insert_tasks_in(&txn, &to_insert, on_batch_completed).await?;
                changes = super::tasks::created_changes(
                    to_insert.iter().map(|(task, _)| task),
                    &inserted,
                );
                inserted
            };
            record_inserted(&mut answers, inserted_index, to_insert, inserted);
        }

        let mut records = Vec::new();
        for (item, answer) in items.iter().zip(&answers) {
            let (
                Some(claim),
                Some(Ok(StoredOutcome {
                    outcome,
                    replayed: false,
                })),
            ) = (&item.claim, answer)
            else {
                continue;
            };
            records.push(record_row(claim, outcome)?);
        }
        if !records.is_empty() {
            // The keys are locked (PostgreSQL) or the writer is alone (SQLite): no one else
            // can have stored one since the look-up above.
            for chunk in super::tasks::statement_sized_chunks(&records, 64) {
                idempotency_keys::Entity::insert_many(chunk.to_vec())
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|err| {
                        if is_unique_violation(&err) {
                            Error::IdempotencyInFlight
                        } else {
                            err.into()
                        }
                    })?;
            }
        }
        self.commit_with_changes(txn, changes).await?;
        if logged_in_statement {
            self.change_log_written.notify_one();
        }
        Ok(finish(answers))
    }

    /// The common case on both databases: keys never seen before, unique_ids not taken. The
    /// group is written with every key's answer in one statement (one text on SQLite) that
    /// nothing can refuse a part of (see [`Store::insert_new_tasks_under_new_keys`]). `None`
    /// when the group needs more: a task in a batch, a key stored already or a unique_id taken
    /// (then nothing was written), or a conflict met a few groups ago.
    async fn create_under_new_keys(
        &self,
        items: &[NewTask],
    ) -> Result<Option<Vec<Option<Result<StoredOutcome>>>>> {
        let mut answers: Vec<Option<Result<StoredOutcome>>> = vec![None; items.len()];
        let (inserted_index, to_insert) = ready_to_insert(items, &mut answers);
        if !super::one_statement::rows_can_be_inserted_together(&to_insert)
            || !self.careful.may_write_optimistically()
        {
            return Ok(None);
        }
        let claims = answers_to_store(items, &inserted_index, &to_insert, &answers)
            .into_iter()
            .map(|(claim, outcome, _)| record_row(claim, &outcome))
            .collect::<Result<Vec<_>>>()?;
        if !self
            .insert_new_tasks_under_new_keys(&to_insert, &claims)
            .await?
        {
            return Ok(None);
        }
        let created = vec![BulkInserted::Created; to_insert.len()];
        record_inserted(&mut answers, inserted_index, to_insert, created);
        Ok(Some(answers))
    }

    /// PostgreSQL's common case: the group in one statement on the pool (see
    /// [`Store::insert_new_tasks_under_keys`]). Each item's answer, or `None` for an item whose
    /// key was already stored (a replay, an expired key not yet swept, or a concurrent request's
    /// key): nothing was written for it, and it goes the transaction way. `None` for the whole
    /// group when it must: tasks in a batch, or a keyed task with a unique_id (its refusal's
    /// answer names the holder, known only after the insert).
    async fn create_under_keys_in_one_statement(
        &self,
        items: &[NewTask],
    ) -> Result<Option<Vec<Option<Result<StoredOutcome>>>>> {
        let mut answers: Vec<Option<Result<StoredOutcome>>> = vec![None; items.len()];
        let (inserted_index, to_insert) = ready_to_insert(items, &mut answers);
        if !self.can_insert_in_one_statement(&to_insert) {
            return Ok(None);
        }
        let mut claims = Vec::new();
        for (claim, outcome, task) in answers_to_store(items, &inserted_index, &to_insert, &answers)
        {
            if task.is_some_and(|task| task.unique_id.is_some()) {
                return Ok(None);
            }
            let task_id = task.map(|task| task.id.to_string());
            claims.push((record_row(claim, &outcome)?, task_id));
        }
        let inserted = self
            .insert_new_tasks_under_keys(&to_insert, &claims)
            .await?;

        for (item, answer) in items.iter().zip(answers.iter_mut()) {
            match &item.claim {
                Some(claim) if !inserted.claimed.contains(&claim.key) => *answer = None,
                _ => {}
            }
        }
        let (inserted_index, to_insert): (Vec<_>, Vec<_>) = inserted_index
            .into_iter()
            .zip(to_insert)
            .filter(|(index, _)| {
                items[*index]
                    .claim
                    .as_ref()
                    .is_none_or(|claim| inserted.claimed.contains(&claim.key))
            })
            .unzip();
        let outcomes = super::one_statement::unique_id_outcomes(
            &self.db,
            to_insert.iter().map(|(task, _)| task),
            &inserted.created,
        )
        .await?;
        record_inserted(&mut answers, inserted_index, to_insert, outcomes);
        Ok(Some(answers))
    }

    /// PostgreSQL: a transaction-scoped advisory lock per key, so a second replica answers
    /// "in flight" at once instead of waiting; it is released by commit, rollback or a dropped
    /// connection, so a crash never leaves a key stuck. SQLite has one writer connection, and
    /// the service already refuses a key that is in flight in this process. One statement
    /// tries every key; returns whether each was locked, in order.
    async fn try_lock_keys(&self, txn: &DatabaseTransaction, keys: &[&str]) -> Result<Vec<bool>> {
        if txn.get_database_backend() != DbBackend::Postgres || keys.is_empty() {
            return Ok(vec![true; keys.len()]);
        }
        let lock_ids: Vec<sea_orm::Value> = keys
            .iter()
            .map(|key| {
                let digest = Sha256::digest(key.as_bytes());
                let mut lock_id = [0u8; 8];
                lock_id.copy_from_slice(&digest[..8]);
                i64::from_be_bytes(lock_id).into()
            })
            .collect();
        let values = (1..=keys.len())
            .map(|n| format!("({n}, ${n}::bigint)"))
            .collect::<Vec<_>>()
            .join(", ");
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT position, pg_try_advisory_xact_lock(lock_id) AS locked \
                 FROM (VALUES {values}) AS claims(position, lock_id) ORDER BY position"
            ),
            lock_ids,
        );
        txn.query_all(statement)
            .await?
            .iter()
            .map(|row| Ok(row.try_get::<bool>("", "locked")?))
            .collect()
    }

    /// Deletes up to `batch` expired keys; returns how many went.
    pub async fn delete_expired_idempotency_keys(&self, now: Timestamp, batch: u64) -> Result<u64> {
        let expired = Query::select()
            .column(idempotency_keys::Column::IdempotencyKey)
            .from(idempotency_keys::Entity)
            .and_where(idempotency_keys::Column::ExpiresAt.lte(now.millis()))
            .limit(batch)
            .to_owned();
        let deleted = idempotency_keys::Entity::delete_many()
            .filter(idempotency_keys::Column::IdempotencyKey.in_subquery(expired))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }
}

/// Each keyed item's answer to store under its key, with the task it creates, if any: its
/// prepared task, or the validation error it is answered with. An item whose creation failed
/// transiently is left out: nothing is stored, the retry decides.
fn answers_to_store<'a>(
    items: &'a [NewTask],
    inserted_index: &[usize],
    to_insert: &'a [(Task, Option<NewDelivery>)],
    answers: &[Option<Result<StoredOutcome>>],
) -> Vec<(&'a IdempotencyClaim, Result<Task>, Option<&'a Task>)> {
    let mut stored = Vec::new();
    let mut to_insert_at = inserted_index.iter().zip(to_insert).peekable();
    for (index, item) in items.iter().enumerate() {
        let task = to_insert_at
            .next_if(|(&at, _)| at == index)
            .map(|(_, (task, _))| task);
        let Some(claim) = &item.claim else {
            continue;
        };
        let outcome = match (task, &answers[index]) {
            (Some(task), _) => Ok(task.clone()),
            (None, Some(Ok(answer))) => answer.outcome.clone(),
            (None, _) => continue,
        };
        stored.push((claim, outcome, task));
    }
    stored
}

/// The row that stores `outcome` under the claim's key.
fn record_row(
    claim: &IdempotencyClaim,
    outcome: &Result<Task>,
) -> Result<idempotency_keys::ActiveModel> {
    let stored = serde_json::to_string(outcome).map_err(|err| {
        tracing::error!(error = %err, "serialising an idempotent outcome failed");
        Error::Internal
    })?;
    Ok(idempotency_keys::ActiveModel {
        idempotency_key: Set(claim.key.clone()),
        account_id: Set(claim.scope.account_id),
        is_test: Set(claim.scope.is_test),
        fingerprint: Set(claim.fingerprint.clone()),
        outcome: Set(stored),
        created_at: Set(claim.now.millis()),
        expires_at: Set(claim.expires_at.millis()),
    })
}

fn replay(row: idempotency_keys::Model, claim: &IdempotencyClaim) -> Result<Result<Task>> {
    if row.account_id != claim.scope.account_id || row.is_test != claim.scope.is_test {
        return Err(Error::IdempotencyConflict(
            "This Idempotency-Key has already been used by another account or API key world."
                .to_owned(),
        ));
    }
    if row.fingerprint != claim.fingerprint {
        return Err(Error::IdempotencyConflict(
            "This Idempotency-Key has already been used with different request parameters."
                .to_owned(),
        ));
    }
    serde_json::from_str(&row.outcome).map_err(|err| {
        tracing::error!(error = %err, "stored idempotent outcome is unreadable");
        Error::Internal
    })
}

/// The prepared tasks of a group that have no answer yet, with their indexes; a prepared
/// validation error is answered (and stored under its key) as the outcome it is.
fn ready_to_insert<T: std::borrow::Borrow<NewTask>>(
    items: &[T],
    answers: &mut [Option<Result<StoredOutcome>>],
) -> (Vec<usize>, Vec<(Task, Option<NewDelivery>)>) {
    let mut to_insert = Vec::new();
    let mut inserted_index = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if answers[index].is_some() {
            continue;
        }
        match &item.borrow().prepared {
            Ok(ready) => {
                inserted_index.push(index);
                to_insert.push(ready.clone());
            }
            // Transient failures are not answers: nothing is stored, a retry may succeed.
            Err(err @ (Error::Internal | Error::Unavailable)) => {
                answers[index] = Some(Err(err.clone()));
            }
            Err(err) => {
                answers[index] = Some(Ok(StoredOutcome {
                    outcome: Err(err.clone()),
                    replayed: false,
                }));
            }
        }
    }
    (inserted_index, to_insert)
}

/// Each inserted task's answer: created, or refused for its unique_id.
fn record_inserted(
    answers: &mut [Option<Result<StoredOutcome>>],
    inserted_index: Vec<usize>,
    to_insert: Vec<(Task, Option<NewDelivery>)>,
    inserted: Vec<BulkInserted>,
) {
    for ((index, (task, _)), outcome) in inserted_index.into_iter().zip(to_insert).zip(inserted) {
        let outcome = match outcome {
            BulkInserted::Created => Ok(task),
            BulkInserted::Duplicate { holder } => Err(Error::UniqueIdConflict {
                unique_id: task.unique_id.unwrap_or_default(),
                // Empty only if the holder let go in the meantime; a retry then succeeds.
                task_id: holder,
            }),
        };
        answers[index] = Some(Ok(StoredOutcome {
            outcome,
            replayed: false,
        }));
    }
}

fn finish(answers: Vec<Option<Result<StoredOutcome>>>) -> Vec<Result<StoredOutcome>> {
    answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(Error::Internal)))
        .collect()
}
