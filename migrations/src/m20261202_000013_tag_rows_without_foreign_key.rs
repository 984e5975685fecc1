//! PostgreSQL: tag rows no longer carry a foreign key to their task. The check cost, per tag
//! row, a `SELECT … FOR KEY SHARE` of the task just inserted, which locks that new row (a heap
//! write and a WAL record each): with two tags per task, creates spent about 6% more of
//! PostgreSQL's time on it than without (BENCHMARKS.md). It guarded nothing the writes do not
//! already: a task's tag rows are written by the statement or transaction that writes the
//! task (or replaces its tags under the task's row lock), and tasks are never deleted.
//!
//! SQLite keeps the key: dropping one there means rebuilding the table, and its check is an
//! index probe on the single writer, without locks.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE task_tags DROP CONSTRAINT IF EXISTS fk_task_tags_task")
            .await?;
        Ok(())
    }
}
