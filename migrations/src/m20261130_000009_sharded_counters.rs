//! Counter rows sharded: each counter key has up to one row per `shard`, and a total is the
//! sum of its rows (every read already sums). On PostgreSQL a writer picks a shard per
//! transaction, so concurrent group commits of one account stop queueing on the same counter
//! rows, whose locks are held until commit. Existing rows become shard 0. The tables are
//! rebuilt (SQLite cannot change a primary key in place).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A counter table and its key columns besides the shard.
struct Counter {
    table: &'static str,
    key: &'static [(&'static str, ColumnKind)],
}

#[derive(Clone, Copy)]
enum ColumnKind {
    BigInteger,
    Boolean,
    Text,
}

const COUNTERS: [Counter; 3] = [
    Counter {
        table: "task_counts",
        key: &[
            ("account_id", ColumnKind::BigInteger),
            ("is_test", ColumnKind::Boolean),
            ("project", ColumnKind::Text),
            ("batch", ColumnKind::Text),
            ("task_type", ColumnKind::Text),
            ("status", ColumnKind::Text),
        ],
    },
    Counter {
        table: "task_hour_counts",
        key: &[
            ("account_id", ColumnKind::BigInteger),
            ("is_test", ColumnKind::Boolean),
            ("created_hour", ColumnKind::BigInteger),
            ("project", ColumnKind::Text),
            ("batch", ColumnKind::Text),
            ("task_type", ColumnKind::Text),
            ("status", ColumnKind::Text),
        ],
    },
    Counter {
        table: "task_tag_counts",
        key: &[
            ("account_id", ColumnKind::BigInteger),
            ("is_test", ColumnKind::Boolean),
            ("tag", ColumnKind::Text),
            ("status", ColumnKind::Text),
        ],
    },
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for counter in &COUNTERS {
            let rebuilt = format!("{}_sharded", counter.table);
            let mut table = Table::create();
            table.table(Alias::new(&rebuilt));
            let mut primary_key = Index::create();
            for (name, kind) in counter.key {
                let mut column = ColumnDef::new(Alias::new(*name));
                match kind {
                    ColumnKind::BigInteger => column.big_integer(),
                    ColumnKind::Boolean => column.boolean(),
                    ColumnKind::Text => column.string(),
                };
                table.col(column.not_null());
                primary_key.col(Alias::new(*name));
            }
            table.col(
                ColumnDef::new(Alias::new("shard"))
                    .integer()
                    .not_null()
                    .default(0),
            );
            table.col(ColumnDef::new(Alias::new("total")).big_integer().not_null());
            primary_key.col(Alias::new("shard"));
            table.primary_key(&mut primary_key);
            manager.create_table(table.to_owned()).await?;

            let columns = counter
                .key
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ");
            manager
                .get_connection()
                .execute_unprepared(&format!(
                    "INSERT INTO {rebuilt} ({columns}, shard, total) \
                     SELECT {columns}, 0, total FROM {table}",
                    table = counter.table
                ))
                .await?;
            manager
                .drop_table(Table::drop().table(Alias::new(counter.table)).to_owned())
                .await?;
            manager
                .rename_table(
                    Table::rename()
                        .table(Alias::new(&rebuilt), Alias::new(counter.table))
                        .to_owned(),
                )
                .await?;
            if manager.get_database_backend()
                == sea_orm_migration::sea_orm::DatabaseBackend::Postgres
            {
                // The primary key keeps the name of the table it was created with.
                manager
                    .get_connection()
                    .execute_unprepared(&format!(
                        "ALTER TABLE {table} RENAME CONSTRAINT {rebuilt}_pkey TO {table}_pkey",
                        table = counter.table
                    ))
                    .await?;
            }
        }
        // Dropped with the old table (migration 4): batch progress reads by batch.
        manager
            .create_index(
                Index::create()
                    .name("idx_task_counts_batch")
                    .table(Alias::new("task_counts"))
                    .col(Alias::new("account_id"))
                    .col(Alias::new("is_test"))
                    .col(Alias::new("batch"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
