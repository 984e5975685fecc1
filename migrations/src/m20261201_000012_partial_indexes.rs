//! Four task indexes become partial: a task adds an entry only when it has the column set.
//! Most tasks have no unique_id, no lease, and many no project or batch, yet each of them
//! wrote an entry for NULL to all four (btree indexes keep NULLs on both databases): four of
//! the nine index entries a plain create wrote (five now). Every query these indexes serve
//! compares the column with a value (`unique_id = ?`, `project = ?`, `batch = ?`,
//! `lease_expires_at > ?`), which implies `IS NOT NULL`, so both planners still use them.
//! The new index is built before the old one is dropped, so uniqueness of unique_ids is never
//! unguarded.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (the new index, the index it replaces)
const REPLACEMENTS: [(&str, &str); 4] = [
    (
        "CREATE UNIQUE INDEX ux_tasks_set_unique_id ON tasks (account_id, is_test, unique_id) \
         WHERE unique_id IS NOT NULL",
        "ux_tasks_unique_id",
    ),
    (
        "CREATE INDEX ix_tasks_list_in_project \
         ON tasks (account_id, is_test, project, created_at, task_id) WHERE project IS NOT NULL",
        "ix_tasks_list_project",
    ),
    (
        "CREATE INDEX ix_tasks_list_in_batch \
         ON tasks (account_id, is_test, batch, created_at, task_id) WHERE batch IS NOT NULL",
        "ix_tasks_list_batch",
    ),
    (
        "CREATE INDEX ix_tasks_leased ON tasks (lease_expires_at) \
         WHERE lease_expires_at IS NOT NULL",
        "idx_tasks_lease_expires_at",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for (create, replaced) in REPLACEMENTS {
            db.execute_unprepared(create).await?;
            db.execute_unprepared(&format!("DROP INDEX {replaced}"))
                .await?;
        }
        Ok(())
    }
}
