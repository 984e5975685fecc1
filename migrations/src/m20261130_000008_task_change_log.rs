//! PostgreSQL's task change log (SPEC §13), in place of `pg_notify`: every transaction that
//! changes tasks adds one row, and each replica's change feed reads the rows that became
//! visible since its last read. `pg_notify` took a cluster-wide lock at commit and held it
//! through the WAL flush, so every notifying write in every replica committed one at a time;
//! a row insert takes no lock shared with other writers.
//!
//! `xid` is the writer's transaction id (`pg_current_xact_id()`, a 64-bit xid8 that never wraps):
//! a reader that remembers the snapshot horizon and which later transactions it has seen reads
//! each committed row once. `seq` orders the rows: a row is the last statement of its transaction,
//! written after its row locks are taken, so two transactions that changed the same task hold
//! `seq`s in their commit order. SQLite (one process) publishes in-process and has no log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE task_change_log (\
                 seq BIGSERIAL PRIMARY KEY, \
                 xid BIGINT NOT NULL, \
                 changes TEXT NOT NULL, \
                 logged_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX task_change_log_xid ON task_change_log (xid)")
            .await?;
        Ok(())
    }
}
