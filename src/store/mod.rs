//! The one repository: sea-orm on SQLite or PostgreSQL. Database errors become domain errors here.

mod accounts;
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

pub use idempotency::{IdempotencyClaim, StoredOutcome};

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `sqlite:…` or `postgres://…`; the error says what to check.
    pub async fn connect(database_url: &str) -> Result<Self, ConnectError> {
        connect::preflight(database_url).await?;
        Self::open(database_url)
            .await
            .map_err(|err| connect::explain(database_url, &err))
    }

    async fn open(database_url: &str) -> Result<Self, DbErr> {
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
            options.max_connections(32).min_connections(1);
        }
        let db = Database::connect(options).await?;
        Ok(Store { db })
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
        if let Err(err) = self.db.close().await {
            tracing::warn!(error = %err, "closing the database pool failed");
        }
    }
}
