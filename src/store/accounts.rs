//! Accounts and API keys (only key hashes and their first characters are stored).

use sea_orm::{
    sea_query::{Expr, OnConflict, Query},
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};

use super::{
    entities::{accounts, api_keys},
    Store,
};
use crate::{
    domain::{ApiKeyInfo, Caller, Role, Scope, Timestamp},
    error::{Error, Result},
};

impl Store {
    /// Creates the account with this key only if no account exists at all, and says whether
    /// this call did. One statement decides (insert-if-none-exists, on the unique name), so of
    /// several replicas starting at once on an empty database exactly one creates it: a
    /// second insert of the same name waits for the first to commit, then does nothing.
    pub async fn create_first_account(
        &self,
        account_name: &str,
        key_hash: &str,
        key_prefix: &str,
        role: Role,
    ) -> Result<bool> {
        let now = Timestamp::now().millis();
        let txn = self.db.begin().await?;
        let no_account_yet = Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(accounts::Entity)
                .to_owned(),
        )
        .not();
        let insert = Query::insert()
            .into_table(accounts::Entity)
            .columns([accounts::Column::Name, accounts::Column::CreatedAt])
            .select_from(
                Query::select()
                    .expr(Expr::val(account_name))
                    .expr(Expr::val(now))
                    .and_where(no_account_yet)
                    .to_owned(),
            )
            .map_err(|err| {
                tracing::error!(error = %err, "the first-account insert is malformed");
                Error::Internal
            })?
            .on_conflict(
                OnConflict::column(accounts::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        let inserted = txn
            .execute(txn.get_database_backend().build(&insert))
            .await?;
        if inserted.rows_affected() != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        let account_id = account_id_in(&txn, account_name).await?;
        insert_key(&txn, account_id, key_hash, key_prefix, false, role, now).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Finds or creates the account and stores the key's hash and prefix for it, in one
    /// transaction: a key never lands without its account, nor an account without its key.
    pub async fn create_api_key(
        &self,
        account_name: &str,
        key_hash: &str,
        key_prefix: &str,
        is_test: bool,
        role: Role,
    ) -> Result<Scope> {
        let now = Timestamp::now().millis();
        let txn = self.db.begin().await?;
        // Insert first, find second. Another process creating the same account at the same
        // moment makes this insert do nothing (PostgreSQL waits for its commit first), and the
        // find then reads its row. Writing first also takes SQLite's write lock before any
        // read, so the transaction never has to upgrade a stale snapshot.
        accounts::Entity::insert(accounts::ActiveModel {
            name: Set(account_name.to_owned()),
            created_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::column(accounts::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let account_id = account_id_in(&txn, account_name).await?;
        insert_key(&txn, account_id, key_hash, key_prefix, is_test, role, now).await?;
        txn.commit().await?;
        Ok(Scope {
            account_id,
            is_test,
        })
    }

    pub async fn find_account_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(accounts::Entity::find()
            .filter(accounts::Column::Name.eq(name))
            .one(&self.db)
            .await?
            .map(|account| account.id))
    }

    /// The caller a key hash belongs to, unless it is unknown or revoked; and whether the
    /// key's prefix is stored (keys made before prefixes were kept have none).
    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<(Caller, bool)>> {
        let Some(key) = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .filter(api_keys::Column::RevokedAt.is_null())
            .one(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let role = parse_role(&key.scope)?;
        Ok(Some((
            Caller {
                scope: Scope {
                    account_id: key.account_id,
                    is_test: key.is_test,
                },
                role,
            },
            key.key_prefix.is_some(),
        )))
    }

    /// Stores the prefix of a key made before prefixes were kept (where none is stored yet).
    pub async fn set_api_key_prefix(&self, key_hash: &str, key_prefix: &str) -> Result<()> {
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::KeyPrefix, Expr::value(key_prefix))
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .filter(api_keys::Column::KeyPrefix.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Every key of the account, oldest first (revoked ones too).
    pub async fn list_api_keys(&self, account_id: i64) -> Result<Vec<ApiKeyInfo>> {
        api_keys::Entity::find()
            .filter(api_keys::Column::AccountId.eq(account_id))
            .order_by_asc(api_keys::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|key| {
                Ok(ApiKeyInfo {
                    id: key.id,
                    prefix: key.key_prefix,
                    is_test: key.is_test,
                    role: parse_role(&key.scope)?,
                    created_at: Timestamp::from_millis(key.created_at),
                    revoked_at: key.revoked_at.map(Timestamp::from_millis),
                })
            })
            .collect()
    }

    /// Revokes one key unless it already is; returns whether this call revoked it.
    pub async fn revoke_api_key(&self, key_id: i64, at: Timestamp) -> Result<bool> {
        let updated = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(at.millis()))
            .filter(api_keys::Column::Id.eq(key_id))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(updated.rows_affected == 1)
    }
}

/// The id of an account the transaction has just inserted or found.
async fn account_id_in(txn: &DatabaseTransaction, account_name: &str) -> Result<i64> {
    accounts::Entity::find()
        .filter(accounts::Column::Name.eq(account_name))
        .one(txn)
        .await?
        .map(|account| account.id)
        .ok_or_else(|| {
            tracing::error!("the account vanished within its own transaction");
            Error::Internal
        })
}

async fn insert_key(
    txn: &DatabaseTransaction,
    account_id: i64,
    key_hash: &str,
    key_prefix: &str,
    is_test: bool,
    role: Role,
    now: i64,
) -> Result<()> {
    api_keys::ActiveModel {
        account_id: Set(account_id),
        key_hash: Set(key_hash.to_owned()),
        key_prefix: Set(Some(key_prefix.to_owned())),
        is_test: Set(is_test),
        created_at: Set(now),
        scope: Set(role.as_str().to_owned()),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(())
}

fn parse_role(scope: &str) -> Result<Role> {
    Role::parse(scope).ok_or_else(|| {
        tracing::error!(scope = %scope, "stored key scope is unknown");
        Error::Internal
    })
}
