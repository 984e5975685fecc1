//! The one repository: sea-orm on SQLite or PostgreSQL. Database errors become domain errors here.

mod accounts;
mod backup;
mod batches;
mod callbacks;
mod connect;
pub mod entities;
mod error;
mod idempotency;
mod projects;
mod tasks;
mod work;

pub use batches::OnBatchCompleted;
pub use callbacks::AttemptRecord;
pub use connect::ConnectError;
use error::is_unique_violation;
pub use tasks::BulkInserted;

pub use idempotency::{IdempotencyClaim, IdempotencyRecord, NewTask, StoredOutcome};

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Store {
    /// Every write, and reads that must see a transaction's own writes.
    db: DatabaseConnection,
    /// Plain reads. On SQLite, read-only connections beside the one writer, so a read never
    /// waits behind another request's fsync (WAL lets readers and the writer run together);
    /// on PostgreSQL, the same pool.
    read: DatabaseConnection,
    /// Whether `read` is a pool of its own (to close), or `db` again.
    separate_readers: bool,
}

/// Read-only SQLite connections (the writer stays alone).
const SQLITE_READERS: u32 = 4;

impl Store {
    /// Connects to `sqlite:…` or `postgres://…`; the error says what to check.
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self, ConnectError> {
        connect::preflight(database_url).await?;
        Self::open(database_url, max_connections)
            .await
            .map_err(|err| connect::explain(database_url, &err))
    }

    async fn open(database_url: &str, max_connections: u32) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(database_url.to_owned());
        options
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        if database_url.starts_with("sqlite:") {
            // One connection serialises SQLite writers: no SQLITE_BUSY on lock upgrades, and a
            // transaction sees exactly what it wrote. The scale-out backend is PostgreSQL.
            options
                .max_connections(1)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|sqlite| {
                    // Per connection, so a recycled connection keeps them.
                    sqlite
                        .journal_mode(SqliteJournalMode::Wal)
                        // FULL: an acknowledged task survives a power loss, not just a crash.
                        .synchronous(SqliteSynchronous::Full)
                        .foreign_keys(true)
                        .busy_timeout(Duration::from_secs(5))
                });
        } else {
            options.max_connections(max_connections).min_connections(1);
        }
        // An in-memory database exists only on its own connection: readers would see another.
        let separate_readers = database_url.starts_with("sqlite:")
            && !database_url.contains(":memory:")
            && !database_url.contains("mode=memory");
        let db = Database::connect(options).await?;
        let read = if separate_readers {
            // Opened after the writer, which created the file and switched it to WAL.
            let mut readers = ConnectOptions::new(database_url.to_owned());
            readers
                .acquire_timeout(Duration::from_secs(10))
                .sqlx_logging(false)
                .max_connections(SQLITE_READERS)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|sqlite| {
                    sqlite.read_only(true).busy_timeout(Duration::from_secs(5))
                });
            Database::connect(readers).await?
        } else {
            db.clone()
        };
        Ok(Store {
            db,
            read,
            separate_readers,
        })
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    /// Whether the database answers at all (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await.map_err(|err| {
            tracing::warn!(error = %err, "database ping failed");
            Error::Unavailable
        })
    }

    fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Sqlite => "sqlite",
            DbBackend::Postgres => "postgres",
            DbBackend::MySql => "mysql",
        }
    }

    pub async fn close(self) {
        if self.separate_readers {
            if let Err(err) = self.read.close().await {
                tracing::warn!(error = %err, "closing the read pool failed");
            }
        }
        if let Err(err) = self.db.close().await {
            tracing::warn!(error = %err, "closing the database pool failed");
        }
    }
}
