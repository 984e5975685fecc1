//! The work queue (leases on tasks), key scopes, callback secrets and the callback outbox.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    LeaseTokenHash,
    LeaseExpiresAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Scope,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    CallbackAuthKey,
    SigningSecret,
}

#[derive(DeriveIden)]
enum CallbackDeliveries {
    Table,
    Id,
    WebhookId,
    AccountId,
    IsTest,
    TaskId,
    Url,
    Event,
    Payload,
    State,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        for column in [
            ColumnDef::new(Tasks::LeaseTokenHash).string().to_owned(),
            ColumnDef::new(Tasks::LeaseExpiresAt)
                .big_integer()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Live leases, counted for the queue metrics.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_lease_expires_at")
                    .table(Tasks::Table)
                    .col(Tasks::LeaseExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(
                        ColumnDef::new(ApiKeys::Scope)
                            .string()
                            .not_null()
                            .default("admin"),
                    )
                    .to_owned(),
            )
            .await?;
        for column in [
            ColumnDef::new(Accounts::CallbackAuthKey)
                .string()
                .to_owned(),
            ColumnDef::new(Accounts::SigningSecret).string().to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Accounts::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(CallbackDeliveries::Table)
                    .col(
                        ColumnDef::new(CallbackDeliveries::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::WebhookId)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::AccountId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::IsTest)
                            .boolean()
                            .not_null(),
                    )
                    // Set for task callbacks; batch callbacks carry their batch in the payload.
                    .col(ColumnDef::new(CallbackDeliveries::TaskId).string_len(24))
                    .col(ColumnDef::new(CallbackDeliveries::Url).text().not_null())
                    .col(
                        ColumnDef::new(CallbackDeliveries::Event)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::Payload)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::State)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::Attempts)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::NextAttemptAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CallbackDeliveries::LockedUntil).big_integer())
                    .col(ColumnDef::new(CallbackDeliveries::LastError).text())
                    .col(
                        ColumnDef::new(CallbackDeliveries::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CallbackDeliveries::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The delivery worker's scan: due deliveries in time order.
        manager
            .create_index(
                Index::create()
                    .name("idx_callback_deliveries_due")
                    .table(CallbackDeliveries::Table)
                    .col(CallbackDeliveries::State)
                    .col(CallbackDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_callback_deliveries_task")
                    .table(CallbackDeliveries::Table)
                    .col(CallbackDeliveries::TaskId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
