//! Projects (a type and versioned default params) and batches (tasks submitted together).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    AccountId,
    IsTest,
    Name,
    TaskType,
    ParamHistory,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Batches {
    Table,
    Id,
    AccountId,
    IsTest,
    Name,
    Project,
    Status,
    Callback,
    Metadata,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    ProjectParamVersion,
}

#[derive(DeriveIden)]
enum TaskCounts {
    Table,
    AccountId,
    IsTest,
    Batch,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .col(
                        ColumnDef::new(Projects::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Projects::AccountId).big_integer().not_null())
                    .col(ColumnDef::new(Projects::IsTest).boolean().not_null())
                    .col(ColumnDef::new(Projects::Name).string().not_null())
                    .col(ColumnDef::new(Projects::TaskType).string().not_null())
                    .col(ColumnDef::new(Projects::ParamHistory).text().not_null())
                    .col(ColumnDef::new(Projects::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Projects::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_projects_name")
                    .table(Projects::Table)
                    .col(Projects::AccountId)
                    .col(Projects::IsTest)
                    .col(Projects::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Batches::Table)
                    .col(
                        ColumnDef::new(Batches::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Batches::AccountId).big_integer().not_null())
                    .col(ColumnDef::new(Batches::IsTest).boolean().not_null())
                    .col(ColumnDef::new(Batches::Name).string().not_null())
                    .col(ColumnDef::new(Batches::Project).string().not_null())
                    .col(ColumnDef::new(Batches::Status).string().not_null())
                    .col(ColumnDef::new(Batches::Callback).text())
                    .col(ColumnDef::new(Batches::Metadata).text().not_null())
                    .col(ColumnDef::new(Batches::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Batches::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Batches::CompletedAt).big_integer())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_batches_name")
                    .table(Batches::Table)
                    .col(Batches::AccountId)
                    .col(Batches::IsTest)
                    .col(Batches::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The list order (newest first), and the staging check of every claim.
        for (name, column) in [
            ("idx_batches_created", Batches::CreatedAt),
            ("idx_batches_status", Batches::Status),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Batches::Table)
                        .col(Batches::AccountId)
                        .col(Batches::IsTest)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }

        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::ProjectParamVersion).big_integer())
                    .to_owned(),
            )
            .await?;
        // A batch's status counts without scanning the account's other counters.
        manager
            .create_index(
                Index::create()
                    .name("idx_task_counts_batch")
                    .table(TaskCounts::Table)
                    .col(TaskCounts::AccountId)
                    .col(TaskCounts::IsTest)
                    .col(TaskCounts::Batch)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
