//! Accounts, API keys, tasks, task tags and per-filter task counters.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    AccountId,
    KeyHash,
    IsTest,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    TaskId,
    AccountId,
    IsTest,
    TaskType,
    Status,
    Instruction,
    Params,
    CallbackUrl,
    Metadata,
    UniqueId,
    Tags,
    Project,
    Batch,
    Response,
    CallbackSucceeded,
    Audits,
    CustomerReviewStatus,
    ClearUniqueIdOnError,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum TaskTags {
    Table,
    TaskId,
    Tag,
    AccountId,
    IsTest,
}

#[derive(DeriveIden)]
enum TaskCounts {
    Table,
    AccountId,
    IsTest,
    Project,
    Batch,
    TaskType,
    Status,
    Total,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(
                        ColumnDef::new(Accounts::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Accounts::Name)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Accounts::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(
                        ColumnDef::new(ApiKeys::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ApiKeys::AccountId).big_integer().not_null())
                    .col(
                        ColumnDef::new(ApiKeys::KeyHash)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(ApiKeys::IsTest).boolean().not_null())
                    .col(ColumnDef::new(ApiKeys::CreatedAt).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_api_keys_account")
                            .from(ApiKeys::Table, ApiKeys::AccountId)
                            .to(Accounts::Table, Accounts::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .col(
                        ColumnDef::new(Tasks::TaskId)
                            .string_len(24)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Tasks::AccountId).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::IsTest).boolean().not_null())
                    .col(ColumnDef::new(Tasks::TaskType).string().not_null())
                    .col(ColumnDef::new(Tasks::Status).string().not_null())
                    .col(ColumnDef::new(Tasks::Instruction).text())
                    .col(ColumnDef::new(Tasks::Params).text().not_null())
                    .col(ColumnDef::new(Tasks::CallbackUrl).text())
                    .col(ColumnDef::new(Tasks::Metadata).text().not_null())
                    .col(ColumnDef::new(Tasks::UniqueId).string())
                    .col(ColumnDef::new(Tasks::Tags).text())
                    .col(ColumnDef::new(Tasks::Project).string())
                    .col(ColumnDef::new(Tasks::Batch).string())
                    .col(ColumnDef::new(Tasks::Response).text())
                    .col(ColumnDef::new(Tasks::CallbackSucceeded).boolean())
                    .col(ColumnDef::new(Tasks::Audits).text().not_null())
                    .col(ColumnDef::new(Tasks::CustomerReviewStatus).string())
                    .col(
                        ColumnDef::new(Tasks::ClearUniqueIdOnError)
                            .boolean()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Tasks::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::CompletedAt).big_integer())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_tasks_account")
                            .from(Tasks::Table, Tasks::AccountId)
                            .to(Accounts::Table, Accounts::Id),
                    )
                    .to_owned(),
            )
            .await?;

        // NULLs never collide in a unique index (both backends), so unset unique_ids are free.
        manager
            .create_index(
                Index::create()
                    .name("ux_tasks_unique_id")
                    .table(Tasks::Table)
                    .col(Tasks::AccountId)
                    .col(Tasks::IsTest)
                    .col(Tasks::UniqueId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        // One index per list order: every page is a bounded range scan, whatever the table size.
        let list_orders: [(&str, Option<Tasks>); 5] = [
            ("ix_tasks_list", None),
            ("ix_tasks_list_status", Some(Tasks::Status)),
            ("ix_tasks_list_type", Some(Tasks::TaskType)),
            ("ix_tasks_list_project", Some(Tasks::Project)),
            ("ix_tasks_list_batch", Some(Tasks::Batch)),
        ];
        for (name, filter_column) in list_orders {
            let mut index = Index::create();
            index
                .name(name)
                .table(Tasks::Table)
                .col(Tasks::AccountId)
                .col(Tasks::IsTest);
            if let Some(column) = filter_column {
                index.col(column);
            }
            index.col(Tasks::CreatedAt).col(Tasks::TaskId);
            manager.create_index(index.to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(TaskTags::Table)
                    .col(ColumnDef::new(TaskTags::TaskId).string_len(24).not_null())
                    .col(ColumnDef::new(TaskTags::Tag).string().not_null())
                    .col(ColumnDef::new(TaskTags::AccountId).big_integer().not_null())
                    .col(ColumnDef::new(TaskTags::IsTest).boolean().not_null())
                    .primary_key(Index::create().col(TaskTags::TaskId).col(TaskTags::Tag))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_task_tags_task")
                            .from(TaskTags::Table, TaskTags::TaskId)
                            .to(Tasks::Table, Tasks::TaskId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_task_tags_tag")
                    .table(TaskTags::Table)
                    .col(TaskTags::AccountId)
                    .col(TaskTags::IsTest)
                    .col(TaskTags::Tag)
                    .col(TaskTags::TaskId)
                    .to_owned(),
            )
            .await?;

        // Exact counts per (project, batch, type, status), kept in the same transaction as
        // every task write, so list `total` is a sum over a handful of rows, not a table count.
        manager
            .create_table(
                Table::create()
                    .table(TaskCounts::Table)
                    .col(
                        ColumnDef::new(TaskCounts::AccountId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TaskCounts::IsTest).boolean().not_null())
                    .col(ColumnDef::new(TaskCounts::Project).string().not_null())
                    .col(ColumnDef::new(TaskCounts::Batch).string().not_null())
                    .col(ColumnDef::new(TaskCounts::TaskType).string().not_null())
                    .col(ColumnDef::new(TaskCounts::Status).string().not_null())
                    .col(ColumnDef::new(TaskCounts::Total).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(TaskCounts::AccountId)
                            .col(TaskCounts::IsTest)
                            .col(TaskCounts::Project)
                            .col(TaskCounts::Batch)
                            .col(TaskCounts::TaskType)
                            .col(TaskCounts::Status),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Forward-only: rolling back would destroy tasks.
        Err(DbErr::Migration("migrations are forward-only".to_owned()))
    }
}
