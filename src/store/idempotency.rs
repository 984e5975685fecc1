//! Idempotent task creation: the key's record, the task and the stored outcome commit together.

use sea_orm::{
    sea_query::Query, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    DbBackend, EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use sha2::{Digest, Sha256};

use super::{batches::OnBatchCompleted, entities::idempotency_keys, is_unique_violation, Store};
use crate::{
    domain::{NewDelivery, Scope, Task, Timestamp},
    error::{Error, Result},
};

/// What a request claims under an `Idempotency-Key`.
pub struct IdempotencyClaim<'a> {
    pub key: &'a str,
    pub scope: Scope,
    /// Hash of the request's method, path and canonical body.
    pub fingerprint: String,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// The answer to an idempotent creation, and whether it was replayed from an earlier request.
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

    /// Replays the outcome stored under the key, or creates `prepared` (which may already be a
    /// validation error) and stores its outcome, in one transaction.
    pub async fn create_task_idempotently(
        &self,
        claim: &IdempotencyClaim<'_>,
        prepared: Result<(Task, Option<NewDelivery>)>,
        on_batch_completed: OnBatchCompleted<'_>,
    ) -> Result<StoredOutcome> {
        let txn = self.db.begin().await?;
        if !self.try_lock_key(&txn, claim.key).await? {
            return Err(Error::IdempotencyInFlight);
        }
        if let Some(row) = idempotency_keys::Entity::find_by_id(claim.key)
            .one(&txn)
            .await?
        {
            if row.expires_at > claim.now.millis() {
                let outcome = replay(row, claim)?;
                txn.commit().await?;
                return Ok(StoredOutcome {
                    outcome,
                    replayed: true,
                });
            }
            idempotency_keys::Entity::delete_by_id(claim.key)
                .exec(&txn)
                .await?;
        }

        let outcome = match prepared {
            Ok((task, callback)) => {
                super::tasks::insert_task_in(&txn, &task, callback.as_ref(), on_batch_completed)
                    .await
                    .map(|()| task)
            }
            Err(err) => Err(err),
        };
        // Transient failures are not answers: roll back so a retry can still succeed.
        if let Err(Error::Internal | Error::Unavailable) = outcome {
            return outcome.map(|task| StoredOutcome {
                outcome: Ok(task),
                replayed: false,
            });
        }
        let stored = serde_json::to_string(&outcome).map_err(|err| {
            tracing::error!(error = %err, "serialising an idempotent outcome failed");
            Error::Internal
        })?;
        let record = idempotency_keys::ActiveModel {
            idempotency_key: Set(claim.key.to_owned()),
            account_id: Set(claim.scope.account_id),
            is_test: Set(claim.scope.is_test),
            fingerprint: Set(claim.fingerprint.clone()),
            outcome: Set(stored),
            created_at: Set(claim.now.millis()),
            expires_at: Set(claim.expires_at.millis()),
        };
        match idempotency_keys::Entity::insert(record)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            // Another replica claimed the key between our look-up and insert: it is in flight.
            Err(err) if is_unique_violation(&err) => return Err(Error::IdempotencyInFlight),
            Err(err) => return Err(err.into()),
        }
        txn.commit().await?;
        Ok(StoredOutcome {
            outcome,
            replayed: false,
        })
    }

    /// PostgreSQL: a transaction-scoped advisory lock per key, so a second replica answers
    /// "in flight" at once instead of waiting; it is released by commit, rollback or a dropped
    /// connection, so a crash never leaves a key stuck. SQLite has one writer connection, and
    /// the service already refuses a key that is in flight in this process.
    async fn try_lock_key(&self, txn: &DatabaseTransaction, key: &str) -> Result<bool> {
        if txn.get_database_backend() != DbBackend::Postgres {
            return Ok(true);
        }
        let digest = Sha256::digest(key.as_bytes());
        let mut lock_id = [0u8; 8];
        lock_id.copy_from_slice(&digest[..8]);
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            [i64::from_be_bytes(lock_id).into()],
        );
        let row = txn.query_one(statement).await?.ok_or(Error::Internal)?;
        Ok(row.try_get::<bool>("", "locked")?)
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

fn replay(row: idempotency_keys::Model, claim: &IdempotencyClaim<'_>) -> Result<Result<Task>> {
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
