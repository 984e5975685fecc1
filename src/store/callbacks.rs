//! The callback outbox and the accounts' callback secrets.

use sea_orm::{
    sea_query::{Expr, LockBehavior, LockType},
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use super::{
    entities::{accounts, callback_deliveries, tasks},
    Store,
};
use crate::{
    domain::{
        CallbackEvent, CallbackSecrets, CallbackSubject, Delivery, NewDelivery, Scope, Timestamp,
    },
    error::{Error, Result},
};

const PENDING: &str = "pending";
const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";

/// What became of one attempt, as the service decided.
pub enum AttemptRecord {
    Succeeded,
    /// Try again at this time.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// No attempts left (or the target is refused): the delivery has failed for good.
    GaveUp {
        error: String,
    },
}

/// Writes a due callback inside the transaction of the change that caused it.
pub(super) async fn insert_delivery(
    db: &impl ConnectionTrait,
    delivery: &NewDelivery,
) -> Result<()> {
    callback_deliveries::Entity::insert(delivery_row(delivery)?)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// The stored row of a new delivery: pending, first attempt due at `first_attempt_at`.
pub(super) fn delivery_row(delivery: &NewDelivery) -> Result<callback_deliveries::ActiveModel> {
    let now = Timestamp::now().millis();
    let payload = serde_json::to_string(&delivery.subject).map_err(|err| {
        tracing::error!(error = %err, "serialising a callback payload failed");
        Error::Internal
    })?;
    Ok(callback_deliveries::ActiveModel {
        webhook_id: Set(delivery.webhook_id.clone()),
        account_id: Set(delivery.subject.scope().account_id),
        is_test: Set(delivery.subject.scope().is_test),
        task_id: Set(match &delivery.subject {
            CallbackSubject::Task(task) => Some(task.id.to_string()),
            CallbackSubject::Batch(_) => None,
        }),
        url: Set(delivery.url.clone()),
        event: Set(delivery.event.as_str().to_owned()),
        payload: Set(payload),
        state: Set(PENDING.to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(delivery.first_attempt_at.millis()),
        locked_until: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
}

impl Store {
    /// Takes up to `limit` due deliveries for one attempt each, marking them locked until
    /// `locked_until` so no other worker (on any replica) sends the same attempt meanwhile.
    pub async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        locked_until: Timestamp,
        limit: u64,
    ) -> Result<Vec<Delivery>> {
        let txn = self.db.begin().await?;
        let mut select = callback_deliveries::Entity::find()
            .filter(callback_deliveries::Column::State.eq(PENDING))
            .filter(callback_deliveries::Column::NextAttemptAt.lte(now.millis()))
            .filter(
                Condition::any()
                    .add(callback_deliveries::Column::LockedUntil.is_null())
                    .add(callback_deliveries::Column::LockedUntil.lte(now.millis())),
            )
            .order_by_asc(callback_deliveries::Column::NextAttemptAt)
            .limit(limit);
        if self.is_postgres() {
            select = select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = select.all(&txn).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            callback_deliveries::Entity::update_many()
                .col_expr(
                    callback_deliveries::Column::LockedUntil,
                    Expr::value(locked_until.millis()),
                )
                .filter(callback_deliveries::Column::Id.eq(row.id))
                .exec(&txn)
                .await?;
            match delivery_from_row(row, locked_until) {
                Ok(delivery) => claimed.push(delivery),
                // An unreadable row must not stall the queue; it stays locked and is logged.
                Err(err) => tracing::error!(error = %err, "unreadable callback delivery skipped"),
            }
        }
        txn.commit().await?;
        Ok(claimed)
    }

    /// Records an attempt's outcome, unless this worker's claim was lost meanwhile (then
    /// whoever holds it now records theirs). Resolving sets the task's `callback_succeeded`.
    pub async fn record_attempt(&self, delivery: &Delivery, record: AttemptRecord) -> Result<bool> {
        let now = Timestamp::now().millis();
        let attempts = i32::try_from(delivery.attempts.saturating_add(1)).unwrap_or(i32::MAX);
        let (state, next_attempt_at, error) = match &record {
            AttemptRecord::Succeeded => (SUCCEEDED, None, None),
            AttemptRecord::Retry { at, error } => (PENDING, Some(at.millis()), Some(error)),
            AttemptRecord::GaveUp { error } => (FAILED, None, Some(error)),
        };
        let txn = self.db.begin().await?;
        let mut update = callback_deliveries::Entity::update_many()
            .col_expr(callback_deliveries::Column::State, Expr::value(state))
            .col_expr(callback_deliveries::Column::Attempts, Expr::value(attempts))
            .col_expr(
                callback_deliveries::Column::LockedUntil,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                callback_deliveries::Column::LastError,
                Expr::value(error.cloned()),
            )
            .col_expr(callback_deliveries::Column::UpdatedAt, Expr::value(now));
        if let Some(at) = next_attempt_at {
            update = update.col_expr(callback_deliveries::Column::NextAttemptAt, Expr::value(at));
        }
        let updated = update
            .filter(callback_deliveries::Column::Id.eq(delivery.id))
            .filter(callback_deliveries::Column::State.eq(PENDING))
            .filter(callback_deliveries::Column::LockedUntil.eq(delivery.locked_until.millis()))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(false);
        }
        let resolved = match record {
            AttemptRecord::Succeeded => Some(true),
            AttemptRecord::GaveUp { .. } => Some(false),
            AttemptRecord::Retry { .. } => None,
        };
        let mut changes = Vec::new();
        if let (Some(succeeded), CallbackSubject::Task(task)) = (resolved, &delivery.subject) {
            tasks::Entity::update_many()
                .col_expr(tasks::Column::CallbackSucceeded, Expr::value(succeeded))
                .filter(tasks::Column::TaskId.eq(task.id.as_str()))
                .exec(&txn)
                .await?;
            changes.push(super::TaskChange {
                task_id: task.id.to_string(),
                kind: super::ChangeKind::Updated,
            });
        }
        self.commit_with_changes(txn, changes).await?;
        Ok(true)
    }

    /// Deliveries not yet resolved, for the metrics.
    pub async fn count_pending_deliveries(&self) -> Result<u64> {
        Ok(callback_deliveries::Entity::find()
            .filter(callback_deliveries::Column::State.eq(PENDING))
            .count(&self.read)
            .await?)
    }

    /// The account's callback secrets, creating them with `generate` the first time. Two
    /// processes racing here agree: only the first write lands, and both read it back.
    pub async fn callback_secrets(
        &self,
        account_id: i64,
        generate: impl FnOnce() -> CallbackSecrets,
    ) -> Result<CallbackSecrets> {
        if let Some(secrets) = self.read_callback_secrets(account_id).await? {
            return Ok(secrets);
        }
        self.write_callback_secrets(account_id, &generate(), true)
            .await?;
        self.read_callback_secrets(account_id)
            .await?
            .ok_or_else(|| Error::NotFound("No such account.".to_owned()))
    }

    /// Replaces the account's callback secrets.
    pub async fn replace_callback_secrets(
        &self,
        account_id: i64,
        secrets: &CallbackSecrets,
    ) -> Result<()> {
        if self
            .write_callback_secrets(account_id, secrets, false)
            .await?
            == 0
        {
            return Err(Error::NotFound("No such account.".to_owned()));
        }
        Ok(())
    }

    /// Writes both secrets; with `only_if_unset`, only where none are stored yet.
    async fn write_callback_secrets(
        &self,
        account_id: i64,
        secrets: &CallbackSecrets,
        only_if_unset: bool,
    ) -> Result<u64> {
        let mut update = accounts::Entity::update_many()
            .col_expr(
                accounts::Column::CallbackAuthKey,
                Expr::value(secrets.auth_key.clone()),
            )
            .col_expr(
                accounts::Column::SigningSecret,
                Expr::value(secrets.signing_secret.clone()),
            )
            .filter(accounts::Column::Id.eq(account_id));
        if only_if_unset {
            update = update.filter(accounts::Column::SigningSecret.is_null());
        }
        Ok(update.exec(&self.db).await?.rows_affected)
    }

    async fn read_callback_secrets(&self, account_id: i64) -> Result<Option<CallbackSecrets>> {
        let account = accounts::Entity::find_by_id(account_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::NotFound("No such account.".to_owned()))?;
        Ok(match (account.callback_auth_key, account.signing_secret) {
            (Some(auth_key), Some(signing_secret)) => Some(CallbackSecrets {
                auth_key,
                signing_secret,
            }),
            _ => None,
        })
    }
}

fn delivery_from_row(row: callback_deliveries::Model, locked_until: Timestamp) -> Result<Delivery> {
    let event = CallbackEvent::parse(&row.event).ok_or_else(|| {
        tracing::error!(event = %row.event, "stored callback event is unknown");
        Error::Internal
    })?;
    let subject: CallbackSubject = serde_json::from_str(&row.payload).map_err(|err| {
        tracing::error!(error = %err, "stored callback payload is unreadable");
        Error::Internal
    })?;
    Ok(Delivery {
        id: row.id,
        webhook_id: row.webhook_id,
        scope: Scope {
            account_id: row.account_id,
            is_test: row.is_test,
        },
        url: row.url,
        event,
        subject,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        locked_until,
    })
}
