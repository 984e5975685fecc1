//! Task counters by creation hour, so a list `total` with a `start_time`/`end_time` window is
//! a sum over whole hours plus an indexed count of the two partial hours at its edges, instead
//! of a count of every matching row. Filled from the existing tasks.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TaskHourCounts {
    Table,
    AccountId,
    IsTest,
    Project,
    Batch,
    TaskType,
    Status,
    CreatedHour,
    Total,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TaskHourCounts::Table)
                    .col(
                        ColumnDef::new(TaskHourCounts::AccountId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TaskHourCounts::IsTest).boolean().not_null())
                    .col(ColumnDef::new(TaskHourCounts::Project).string().not_null())
                    .col(ColumnDef::new(TaskHourCounts::Batch).string().not_null())
                    .col(ColumnDef::new(TaskHourCounts::TaskType).string().not_null())
                    .col(ColumnDef::new(TaskHourCounts::Status).string().not_null())
                    // created_at in whole hours since the epoch (created_at / 3,600,000).
                    .col(
                        ColumnDef::new(TaskHourCounts::CreatedHour)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TaskHourCounts::Total)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TaskHourCounts::AccountId)
                            .col(TaskHourCounts::IsTest)
                            .col(TaskHourCounts::CreatedHour)
                            .col(TaskHourCounts::Project)
                            .col(TaskHourCounts::Batch)
                            .col(TaskHourCounts::TaskType)
                            .col(TaskHourCounts::Status),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO task_hour_counts \
                 (account_id, is_test, project, batch, task_type, status, created_hour, total) \
                 SELECT account_id, is_test, COALESCE(project, ''), COALESCE(batch, ''), \
                 task_type, status, created_at / 3600000, COUNT(*) FROM tasks \
                 GROUP BY account_id, is_test, COALESCE(project, ''), COALESCE(batch, ''), \
                 task_type, status, created_at / 3600000",
            )
            .await?;
        Ok(())
    }
}
