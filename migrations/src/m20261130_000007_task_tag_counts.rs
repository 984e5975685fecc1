//! Task counters by tag and status, so a list `total` filtered by one tag (and a status) is a
//! sum of counter rows instead of a count of every tagged row: ~125–210 ms at 1,000,000 tasks
//! with a common tag before. Filled from the existing tag rows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TaskTagCounts {
    Table,
    AccountId,
    IsTest,
    Tag,
    Status,
    Total,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TaskTagCounts::Table)
                    .col(
                        ColumnDef::new(TaskTagCounts::AccountId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TaskTagCounts::IsTest).boolean().not_null())
                    .col(ColumnDef::new(TaskTagCounts::Tag).string().not_null())
                    .col(ColumnDef::new(TaskTagCounts::Status).string().not_null())
                    .col(
                        ColumnDef::new(TaskTagCounts::Total)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TaskTagCounts::AccountId)
                            .col(TaskTagCounts::IsTest)
                            .col(TaskTagCounts::Tag)
                            .col(TaskTagCounts::Status),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO task_tag_counts (account_id, is_test, tag, status, total) \
                 SELECT task_tags.account_id, task_tags.is_test, task_tags.tag, tasks.status, \
                 COUNT(*) FROM task_tags JOIN tasks ON tasks.task_id = task_tags.task_id \
                 GROUP BY task_tags.account_id, task_tags.is_test, task_tags.tag, tasks.status",
            )
            .await?;
        Ok(())
    }
}
