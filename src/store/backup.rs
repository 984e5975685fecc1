//! Online copies of a SQLite database (`VACUUM INTO`), taken while servers keep writing to it.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::Store;
use crate::error::{Error, Result};

impl Store {
    /// Whether this SQLite database holds annotask's tables (it has been migrated), so that a
    /// wrong path is not "backed up" as an empty file.
    pub async fn sqlite_has_schema(&self) -> Result<bool> {
        let statement = Statement::from_string(
            DbBackend::Sqlite,
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
        );
        let row = self.db.query_one(statement).await?;
        let count = match row {
            Some(row) => row.try_get::<i64>("", "n")?,
            None => 0,
        };
        Ok(count > 0)
    }

    /// Writes a consistent snapshot of this SQLite database to the new file `path` with
    /// `VACUUM INTO`: one read transaction, so writers on other connections and processes go
    /// on (WAL) and the copy holds exactly what was committed when it began. The path is bound
    /// as a parameter, never spliced into the SQL. SQLite refuses a file that exists and is
    /// not empty.
    pub async fn sqlite_vacuum_into(&self, path: &str) -> Result<()> {
        let statement =
            Statement::from_sql_and_values(DbBackend::Sqlite, "VACUUM INTO ?", [path.into()]);
        self.db.execute(statement).await.map_err(|err| {
            tracing::warn!(error = %err, "VACUUM INTO failed");
            match err {
                sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => {
                    Error::Unavailable
                }
                // Usually about the target: no space left, no permission, a file in the way.
                other => Error::invalid(format!("SQLite could not write the copy: {other}")),
            }
        })?;
        Ok(())
    }
}
