//! Database errors become domain errors here, and nowhere else.

use sea_orm::{sqlx, DbErr, RuntimeErr, SqlErr};

use crate::error::Error;

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            // Retryable: the client may try again (another replica, or later), nothing is lost.
            tracing::warn!(error = %err, "database unavailable");
            Error::Unavailable
        } else {
            tracing::error!(error = %err, "database error");
            Error::Internal
        }
    }
}

/// Whether the database could not be reached or could not answer in time, as opposed to a
/// statement that is wrong (a bug: 500). sea-orm reports a connection cut mid-query as a query
/// error, so the cause inside is what decides.
pub(super) fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(cause)) | DbErr::Query(RuntimeErr::SqlxError(cause)) => {
            sqlx_error_is_unavailable(cause)
        }
        _ => false,
    }
}

fn sqlx_error_is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs that mean "not now" rather than "never": connection exceptions
/// (class 08), the server shutting down or starting (57P01-57P03), too many connections
/// (53300), a statement cancelled by `statement_timeout` (57014). SQLite: still busy or
/// locked after the busy timeout (5, 6 and their extended codes).
fn unavailable_code(code: &str) -> bool {
    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "57014") {
        return true;
    }
    code.parse::<u32>()
        .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6))
}

/// The same test on SQLite and PostgreSQL: sea-orm reads each backend's error code.
pub(super) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_connection_is_unavailable_and_a_bad_statement_is_not() {
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(is_unavailable(&DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::Io(cut)
        ))));
        assert!(is_unavailable(&DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::PoolTimedOut
        ))));
        assert!(is_unavailable(&DbErr::ConnectionAcquire(
            sea_orm::ConnAcquireErr::Timeout
        )));
        assert!(!is_unavailable(&DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::RowNotFound
        ))));
        assert!(!is_unavailable(&DbErr::Custom("bug".to_owned())));
    }

    #[test]
    fn shutdown_and_timeout_codes_are_unavailable_and_constraint_codes_are_not() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53300", "57014", "5", "517", "6",
        ] {
            assert!(unavailable_code(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "19", "2067"] {
            assert!(!unavailable_code(code), "{code}");
        }
    }
}
