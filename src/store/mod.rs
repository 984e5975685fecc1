//! The one repository: sea-orm on SQLite or PostgreSQL. Database errors become domain errors here.

mod accounts;
mod backup;
mod batches;
mod callbacks;
mod changes;
mod connect;
mod counters;
pub mod entities;
mod error;
mod idempotency;
mod one_statement;
mod projects;
mod read_pool;
mod tasks;
mod work;

pub use batches::OnBatchCompleted;
pub use callbacks::AttemptRecord;
pub use changes::{ChangeKind, ChangeNotice, ChangeSubscription, TaskChange, CHANGE_LOG_RETENTION};
pub use connect::ConnectError;
use error::is_unique_violation;
pub use tasks::BulkInserted;

pub use idempotency::{IdempotencyClaim, IdempotencyRecord, NewTask, StoredOutcome};

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    sqlx::{
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
        ConnectOptions as _,
    },
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
};

use crate::{
    config::DatabasePool,
    error::{Error, Result},
};

#[derive(Clone)]
pub struct Store {
    /// Every write, and reads that must see a transaction's own writes.
    db: DatabaseConnection,
    /// Plain reads, on a pool of their own (no ping each time a connection goes back). On
    /// SQLite, read-only connections beside the one writer, so a read never waits behind
    /// another request's fsync (WAL lets readers and the writer run together).
    read: read_pool::ReadPool,
    /// Read-only transactions that must see one snapshot (a list with a counted total, an
    /// export). SQLite: read-only connections of their own; PostgreSQL: `db`.
    snapshots: DatabaseConnection,
    /// Whether `snapshots` is a pool of its own (to close), or `db` again.
    separate_snapshots: bool,
    /// SQLite's task change feed (PostgreSQL's is the `task_change_log` table).
    local_changes: changes::LocalChanges,
    /// Signalled after this process commits a change-log row, to wake its feed's reader.
    change_log_written: std::sync::Arc<tokio::sync::Notify>,
    /// Create groups still to write the careful way after a conflict.
    careful: std::sync::Arc<one_statement::CarefulAfterConflicts>,
}

/// How one connection pool is used at a moment, for `/metrics`.
pub struct PoolStats {
    /// `write` (every write), `read` (plain reads) or `snapshot` (SQLite's read transactions;
    /// on PostgreSQL they use `write`).
    pub pool: &'static str,
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

/// The PostgreSQL advisory lock key that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x616e_6e6f_7461_736b; // "annotask"

/// Read-only SQLite connections (the writer stays alone).
const SQLITE_READERS: u32 = 4;

impl Store {
    /// Connects to `sqlite:…` or `postgres://…`; the error says what to check.
    pub async fn connect(database_url: &str, pool: &DatabasePool) -> Result<Self, ConnectError> {
        connect::preflight(database_url).await?;
        Self::open(database_url, pool)
            .await
            .map_err(|err| connect::explain(database_url, &err))
    }

    async fn open(database_url: &str, pool: &DatabasePool) -> Result<Self, DbErr> {
        let (db, postgres) = if database_url.starts_with("sqlite:") {
            let mut options = ConnectOptions::new(database_url.to_owned());
            // One connection serialises SQLite writers: no SQLITE_BUSY on lock upgrades, and a
            // transaction sees exactly what it wrote. The scale-out backend is PostgreSQL.
            // A file has no peer to lose: no liveness check before handing a connection out.
            options
                .acquire_timeout(pool.acquire_timeout)
                .test_before_acquire(false)
                .sqlx_logging(false)
                .max_connections(1)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|sqlite| {
                    // Per connection, so a recycled connection keeps them.
                    sqlite
                        .journal_mode(SqliteJournalMode::Wal)
                        // FULL: an acknowledged task survives a power loss, not just a crash.
                        .synchronous(SqliteSynchronous::Full)
                        // A multi-row insert keeps a statement journal (to undo just itself on
                        // a constraint error), which spilled to a temporary file past 64 KiB:
                        // an open, writes and an unlink per group commit.
                        .pragma("temp_store", "MEMORY")
                        .foreign_keys(true)
                        .busy_timeout(Duration::from_secs(5))
                });
            (Database::connect(options).await?, None)
        } else {
            // The configured connections are shared: half for plain reads, the rest (the odd
            // one too) for writes and read transactions. With one, reads use the writer's.
            let readers = pool.max_connections / 2;
            let writers = pool.max_connections - readers;
            let (db, connect) = connect_postgres(database_url, writers, pool).await?;
            (db, (readers > 0).then_some((connect, readers)))
        };
        // An in-memory database exists only on its own connection: readers would see another.
        let separate_readers = database_url.starts_with("sqlite:")
            && !database_url.contains(":memory:")
            && !database_url.contains("mode=memory");
        // SQLite's readers are opened after the writer, which created the file and set WAL.
        let read = if let Some((connect, readers)) = postgres {
            read_pool::ReadPool::postgres(connect, readers, pool.acquire_timeout).await?
        } else if separate_readers {
            let readers = database_url
                .parse::<SqliteConnectOptions>()
                .map_err(|err| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err)))?
                .read_only(true)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
            read_pool::ReadPool::sqlite(readers, SQLITE_READERS, pool.acquire_timeout).await?
        } else {
            read_pool::ReadPool::writer(db.clone())
        };
        let snapshots = if separate_readers {
            let mut readers = ConnectOptions::new(database_url.to_owned());
            readers
                .acquire_timeout(pool.acquire_timeout)
                .test_before_acquire(false)
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
            snapshots,
            separate_snapshots: separate_readers,
            local_changes: changes::LocalChanges::new(),
            change_log_written: Default::default(),
            careful: Default::default(),
        })
    }

    /// Applies pending migrations. On PostgreSQL, under an advisory lock: replicas starting at
    /// once on an empty database would otherwise both create the same tables, and one would
    /// fail; the second now waits, then finds nothing left to do.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        if !self.is_postgres() {
            return Migrator::up(&self.db, None).await;
        }
        let txn = self.db.begin().await?;
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); SET LOCAL statement_timeout = 0"
        ))
        .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await
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

    /// The writer pool, and the read and snapshot pools where they are pools of their own.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let mut stats = vec![pool_stats("write", &self.db)];
        stats.extend(self.read.stats());
        if self.separate_snapshots {
            stats.push(pool_stats("snapshot", &self.snapshots));
        }
        stats
    }

    pub async fn close(self) {
        self.read.close().await;
        if self.separate_snapshots {
            if let Err(err) = self.snapshots.close().await {
                tracing::warn!(error = %err, "closing the snapshot pool failed");
            }
        }
        if let Err(err) = self.db.close().await {
            tracing::warn!(error = %err, "closing the database pool failed");
        }
    }
}

/// A connection idle for less than this is handed out without a liveness check (HikariCP's
/// `aliveBypassWindowMs` is 500 ms): under load every query would otherwise cost two round
/// trips. A connection that died within the window fails its one request fast (503, the
/// client retries) and is then dropped; an older one is pinged, and replaced if dead.
const TRUSTED_IDLE: Duration = Duration::from_millis(500);

/// The PostgreSQL pool, built on sqlx directly: sea-orm's options can only ping every
/// connection before every use, or never.
/// Also returns the connect options, for the read pool's connections.
async fn connect_postgres(
    database_url: &str,
    max_connections: u32,
    pool: &DatabasePool,
) -> Result<
    (
        DatabaseConnection,
        sea_orm::sqlx::postgres::PgConnectOptions,
    ),
    DbErr,
> {
    use sea_orm::sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        ConnectOptions as _, Connection as _,
    };
    let as_db_err = |err| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err));
    let statement_timeout = pool.statement_timeout.as_millis().to_string();
    let connect = database_url
        .parse::<PgConnectOptions>()
        .map_err(as_db_err)?
        .disable_statement_logging()
        // Server-side, per connection (a startup parameter, so every new connection in the
        // pool has it): a runaway statement is cancelled, and answered 503.
        .options([("statement_timeout", statement_timeout.as_str())]);
    // sqlx opens a new connection within the acquire timeout, and pings one idle past
    // `TRUSTED_IDLE` before handing it out: an unreachable database fails a request after
    // this, never hangs it, and a restarted one is picked up again without a restart of ours.
    let sqlx_pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(pool.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= TRUSTED_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(connect.clone())
        .await
        .map_err(as_db_err)?;
    Ok((
        sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(sqlx_pool),
        connect,
    ))
}

fn pool_stats(pool: &'static str, connection: &DatabaseConnection) -> PoolStats {
    // The pool getters panic on another backend: each is called only for its own.
    let (size, idle, max) = match connection.get_database_backend() {
        DbBackend::Postgres => {
            let sqlx = connection.get_postgres_connection_pool();
            (
                sqlx.size(),
                sqlx.num_idle(),
                sqlx.options().get_max_connections(),
            )
        }
        DbBackend::Sqlite => {
            let sqlx = connection.get_sqlite_connection_pool();
            (
                sqlx.size(),
                sqlx.num_idle(),
                sqlx.options().get_max_connections(),
            )
        }
        DbBackend::MySql => (0, 0, 0),
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
    PoolStats {
        pool,
        idle,
        // Size and idle are read one after the other: never report more in use than exist.
        in_use: size - idle,
        max,
    }
}
