//! API key prefixes (so keys can be listed and revoked by them) and revocation.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    AccountId,
    KeyPrefix,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Both nullable: keys made before this migration have no known prefix (only their
        // hash was stored), and a live key has no revocation time. SQLite takes one column per
        // ALTER TABLE.
        for column in [
            ColumnDef::new(ApiKeys::KeyPrefix).string_len(16).to_owned(),
            ColumnDef::new(ApiKeys::RevokedAt).big_integer().to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Listing and revoking read one account's keys.
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_account")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::AccountId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("migrations are forward-only".to_owned()))
    }
}
