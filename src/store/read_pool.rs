//! Plain reads, on connections of the repository's own pool. sqlx's pool pings every connection
//! it takes back (hard-coded in sqlx 0.8): one more round trip to PostgreSQL, or one more hop to
//! SQLite's worker thread, for every statement. Here a connection goes back as it is, and one
//! idle past `TRUSTED_IDLE` is pinged before it is handed out again, as the writer pool does.
//! Statements are still sea-orm's, bound by sea-orm's binder; rows become sea-orm's
//! `QueryResult`, so every read keeps using the entities (`.one(&store.read)` and the like).

use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};
use sea_orm::{
    sea_query::Values,
    sqlx::{self, postgres::PgConnectOptions, sqlite::SqliteConnectOptions, Connection},
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement,
};
use sea_query_binder::SqlxValues;

use super::{PoolStats, TRUSTED_IDLE};

/// Cheap to clone: the pools inside are shared.
#[derive(Clone)]
pub(super) struct ReadPool {
    backend: Backend,
    /// How long a read waits for a connection, including opening one and its liveness check.
    acquire_timeout: Duration,
}

#[derive(Clone)]
enum Backend {
    Postgres(Pool<Connector<sqlx::PgConnection>>),
    Sqlite(Pool<Connector<sqlx::SqliteConnection>>),
    /// An in-memory SQLite database exists only on the writer's connection: reads go there.
    Writer(DatabaseConnection),
}

impl ReadPool {
    pub(super) async fn postgres(
        options: PgConnectOptions,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, DbErr> {
        let pool = build(options, true, max_connections, acquire_timeout).await?;
        Ok(ReadPool {
            backend: Backend::Postgres(pool),
            acquire_timeout,
        })
    }

    pub(super) async fn sqlite(
        options: SqliteConnectOptions,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, DbErr> {
        // A SQLite connection is a file, with no peer to lose while idle: never pinged.
        let pool = build(options, false, max_connections, acquire_timeout).await?;
        Ok(ReadPool {
            backend: Backend::Sqlite(pool),
            acquire_timeout,
        })
    }

    pub(super) fn writer(db: DatabaseConnection) -> Self {
        ReadPool {
            backend: Backend::Writer(db),
            acquire_timeout: Duration::ZERO,
        }
    }

    /// `None` when reads share the writer's pool.
    pub(super) fn stats(&self) -> Option<PoolStats> {
        let status = match &self.backend {
            Backend::Postgres(pool) => pool.status(),
            Backend::Sqlite(pool) => pool.status(),
            Backend::Writer(_) => return None,
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (size, idle) = (count(status.size), count(status.available));
        Some(PoolStats {
            pool: "read",
            idle: idle.min(size),
            in_use: size - idle.min(size),
            max: count(status.max_size),
        })
    }

    /// Says goodbye on every idle connection (a dropped one would just vanish), then refuses
    /// new reads.
    pub(super) async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => close(pool).await,
            Backend::Sqlite(pool) => close(pool).await,
            Backend::Writer(_) => {}
        }
    }
}

/// The pool, with one connection opened already: a database the reads cannot reach fails the
/// start, not the first request.
async fn build<C: Connection>(
    options: C::Options,
    ping_when_idle: bool,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<Pool<Connector<C>>, DbErr> {
    let max_size = usize::try_from(max_connections.max(1)).unwrap_or(usize::MAX);
    let pool = Pool::builder(Connector {
        options,
        ping_when_idle,
    })
    .max_size(max_size)
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .map_err(|err| DbErr::Custom(format!("building the read pool: {err}")))?;
    let first = checkout(&pool, acquire_timeout).await?;
    settle(first, Ok(()))?;
    Ok(pool)
}

async fn close<C: Connection>(pool: &Pool<Connector<C>>) {
    let idle = pool.retain(|_, _| false).removed;
    pool.close();
    for connection in idle {
        if let Err(err) = connection.connection.close().await {
            tracing::debug!(error = %err, "closing a read connection failed");
        }
    }
}

pub(super) struct Connector<C: Connection> {
    options: C::Options,
    /// Whether a connection idle for `TRUSTED_IDLE` is pinged before it is handed out.
    ping_when_idle: bool,
}

pub(super) struct ReadConnection<C> {
    connection: C,
    last_used: Instant,
    /// False while a statement runs. A request dropped mid-statement leaves it false: such a
    /// connection may hold half a conversation, so it is closed, never handed out again.
    settled: bool,
}

impl<C: Connection> Manager for Connector<C> {
    type Type = ReadConnection<C>;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<ReadConnection<C>, sqlx::Error> {
        Ok(ReadConnection {
            connection: C::connect_with(&self.options).await?,
            last_used: Instant::now(),
            settled: true,
        })
    }

    async fn recycle(
        &self,
        connection: &mut ReadConnection<C>,
        _: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if !connection.settled {
            return Err(RecycleError::message("a statement on it was abandoned"));
        }
        if self.ping_when_idle && connection.last_used.elapsed() >= TRUSTED_IDLE {
            connection.connection.ping().await?;
            connection.last_used = Instant::now();
        }
        Ok(())
    }
}

async fn checkout<C: Connection>(
    pool: &Pool<Connector<C>>,
    timeout: Duration,
) -> Result<Object<Connector<C>>, DbErr> {
    let mut object = match tokio::time::timeout(timeout, pool.get()).await {
        Err(_) | Ok(Err(PoolError::Timeout(_))) => {
            return Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
        }
        Ok(Err(PoolError::Closed)) => {
            return Err(DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))
        }
        Ok(Err(PoolError::Backend(err))) => return Err(DbErr::Conn(RuntimeErr::SqlxError(err))),
        Ok(Err(err)) => return Err(DbErr::Custom(format!("read pool: {err}"))),
        Ok(Ok(object)) => object,
    };
    object.settled = false;
    Ok(object)
}

/// After a statement: a connection that failed at the transport level is closed; any other
/// goes back to the pool, marked as just used.
fn settle<C: Connection, T>(
    mut object: Object<Connector<C>>,
    result: Result<T, sqlx::Error>,
) -> Result<T, DbErr> {
    let broken = matches!(
        &result,
        Err(sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed)
    );
    if broken {
        drop(Object::take(object));
    } else {
        object.settled = true;
        object.last_used = Instant::now();
    }
    result.map_err(|err| DbErr::Query(RuntimeErr::SqlxError(err)))
}

fn sql_and_values(statement: Statement) -> (String, SqlxValues) {
    let values = statement.values.unwrap_or(Values(Vec::new()));
    (statement.sql, SqlxValues(values))
}

/// Runs one sqlx fetch on a checked-out connection of either backend's pool.
macro_rules! fetch {
    ($self:ident, $pool:ident, $statement:ident, $fetch:ident) => {{
        let (sql, values) = sql_and_values($statement);
        let mut object = checkout($pool, $self.acquire_timeout).await?;
        let result = sqlx::query_with(&sql, values)
            .$fetch(&mut object.connection)
            .await;
        settle(object, result)
    }};
}

#[sea_orm::prelude::async_trait::async_trait]
impl ConnectionTrait for ReadPool {
    fn get_database_backend(&self) -> DbBackend {
        match &self.backend {
            Backend::Postgres(_) => DbBackend::Postgres,
            Backend::Sqlite(_) => DbBackend::Sqlite,
            Backend::Writer(db) => db.get_database_backend(),
        }
    }

    async fn execute(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        match &self.backend {
            Backend::Writer(db) => db.execute(statement).await,
            _ => Err(read_only()),
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match &self.backend {
            Backend::Writer(db) => db.execute_unprepared(sql).await,
            _ => Err(read_only()),
        }
    }

    async fn query_one(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(match &self.backend {
            Backend::Postgres(pool) => {
                fetch!(self, pool, statement, fetch_optional)?.map(QueryResult::from)
            }
            Backend::Sqlite(pool) => {
                fetch!(self, pool, statement, fetch_optional)?.map(QueryResult::from)
            }
            Backend::Writer(db) => db.query_one(statement).await?,
        })
    }

    async fn query_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        Ok(match &self.backend {
            Backend::Postgres(pool) => fetch!(self, pool, statement, fetch_all)?
                .into_iter()
                .map(QueryResult::from)
                .collect(),
            Backend::Sqlite(pool) => fetch!(self, pool, statement, fetch_all)?
                .into_iter()
                .map(QueryResult::from)
                .collect(),
            Backend::Writer(db) => db.query_all(statement).await?,
        })
    }
}

/// A write sent to the read pool is a bug in the repository, not a request's fault.
fn read_only() -> DbErr {
    DbErr::Custom("the read pool runs no writes".to_owned())
}

#[cfg(test)]
mod tests {
    use sea_orm::sqlx::{sqlite::SqliteConnectOptions, SqliteConnection};

    use super::*;

    /// `cache_size` is a per-connection setting: it tells one connection from another.
    async fn cache_size(object: &mut Object<Connector<SqliteConnection>>) -> i64 {
        sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&mut object.connection)
            .await
            .expect("cache_size")
    }

    #[tokio::test]
    async fn a_connection_whose_statement_was_abandoned_is_not_handed_out_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("reads.db"))
            .create_if_missing(true);
        let timeout = Duration::from_secs(5);
        let pool = build::<SqliteConnection>(options, false, 1, timeout)
            .await
            .expect("pool");

        let mut object = checkout(&pool, timeout).await.expect("checkout");
        sqlx::query("PRAGMA cache_size = -1234")
            .execute(&mut object.connection)
            .await
            .expect("pragma");
        settle(object, Ok(())).expect("settle");

        // Settled: the same connection comes back.
        let mut object = checkout(&pool, timeout).await.expect("checkout");
        assert_eq!(cache_size(&mut object).await, -1234);
        // Dropped without settling, as when a request is dropped mid-statement.
        drop(object);

        let mut object = checkout(&pool, timeout).await.expect("checkout");
        assert_ne!(cache_size(&mut object).await, -1234, "the abandoned one");
        settle(object, Ok(())).expect("settle");
        assert_eq!(pool.status().size, 1);
    }
}
