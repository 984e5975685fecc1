//! Accounts and API keys (only key hashes are stored).

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};

use super::{
    entities::{accounts, api_keys},
    is_unique_violation, Store,
};
use crate::{
    domain::{Caller, Role, Scope, Timestamp},
    error::{Error, Result},
};

impl Store {
    pub async fn count_accounts(&self) -> Result<u64> {
        Ok(accounts::Entity::find().count(&self.db).await?)
    }

    /// Finds or creates the account, then stores the key hash for it.
    pub async fn create_api_key(
        &self,
        account_name: &str,
        key_hash: &str,
        is_test: bool,
        role: Role,
    ) -> Result<Scope> {
        let now = Timestamp::now().millis();
        let account_id = match self.find_account_id(account_name).await? {
            Some(id) => id,
            None => {
                let created = accounts::ActiveModel {
                    name: Set(account_name.to_owned()),
                    created_at: Set(now),
                    ..Default::default()
                }
                .insert(&self.db)
                .await;
                match created {
                    Ok(account) => account.id,
                    // Another process created it a moment ago.
                    Err(err) if is_unique_violation(&err) => self
                        .find_account_id(account_name)
                        .await?
                        .ok_or(Error::Internal)?,
                    Err(err) => return Err(err.into()),
                }
            }
        };
        api_keys::ActiveModel {
            account_id: Set(account_id),
            key_hash: Set(key_hash.to_owned()),
            is_test: Set(is_test),
            created_at: Set(now),
            scope: Set(role.as_str().to_owned()),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
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

    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<Caller>> {
        let Some(key) = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .one(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let role = Role::parse(&key.scope).ok_or_else(|| {
            tracing::error!(scope = %key.scope, "stored key scope is unknown");
            Error::Internal
        })?;
        Ok(Some(Caller {
            scope: Scope {
                account_id: key.account_id,
                is_test: key.is_test,
            },
            role,
        }))
    }
}
