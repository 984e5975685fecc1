//! Forward-only schema migrations, written with the schema DSL so they run on SQLite and PostgreSQL alike.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_core;
mod m20261129_000002_idempotency;
mod m20261130_000003_work_queue;
mod m20261130_000004_projects_batches;
mod m20261130_000005_api_key_prefix;
mod m20261130_000006_task_hour_counts;
mod m20261130_000007_task_tag_counts;
mod m20261130_000008_task_change_log;
mod m20261130_000009_sharded_counters;
mod m20261201_000010_task_event_hour_counts;
mod m20261201_000011_review_status_index;
mod m20261201_000012_partial_indexes;
mod m20261202_000013_tag_rows_without_foreign_key;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_core::Migration),
            Box::new(m20261129_000002_idempotency::Migration),
            Box::new(m20261130_000003_work_queue::Migration),
            Box::new(m20261130_000004_projects_batches::Migration),
            Box::new(m20261130_000005_api_key_prefix::Migration),
            Box::new(m20261130_000006_task_hour_counts::Migration),
            Box::new(m20261130_000007_task_tag_counts::Migration),
            Box::new(m20261130_000008_task_change_log::Migration),
            Box::new(m20261130_000009_sharded_counters::Migration),
            Box::new(m20261201_000010_task_event_hour_counts::Migration),
            Box::new(m20261201_000011_review_status_index::Migration),
            Box::new(m20261201_000012_partial_indexes::Migration),
            Box::new(m20261202_000013_tag_rows_without_foreign_key::Migration),
        ]
    }
}
