//! Database errors become domain errors here, and nowhere else.

use sea_orm::{DbErr, SqlErr};

use crate::error::Error;

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Error::Unavailable
            }
            other => {
                tracing::error!(error = %other, "database error");
                Error::Internal
            }
        }
    }
}

/// The same test on SQLite and PostgreSQL: sea-orm reads each backend's error code.
pub(super) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}
