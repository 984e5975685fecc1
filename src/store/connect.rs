//! Opening the database, with errors that name what to check: the SQLite path and its
//! directory, or the PostgreSQL host and port (found unreachable within seconds, not after
//! the pool's whole acquire timeout).

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use sea_orm::DbErr;

/// How long a refused or silent PostgreSQL may take to be reported.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the database could not be opened, in words a newcomer can act on.
#[derive(Debug)]
pub struct ConnectError(String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// Where a database URL points, as far as the diagnosis needs.
enum Target {
    /// `None` for an in-memory database.
    Sqlite {
        path: Option<PathBuf>,
        creates: bool,
    },
    Postgres {
        address: Option<String>,
        database: String,
    },
}

fn target(database_url: &str) -> Result<Target, ConnectError> {
    if let Some(rest) = database_url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let creates = query.split('&').any(|pair| pair == "mode=rwc");
        let path = (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path));
        return Ok(Target::Sqlite { path, creates });
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let url = url::Url::parse(database_url).map_err(|err| {
            ConnectError(format!("the database URL is not a valid URL ({err}): expected postgres://USER@HOST:PORT/DATABASE"))
        })?;
        let address = url
            .host_str()
            .filter(|host| !host.is_empty())
            .map(|host| format!("{host}:{}", url.port().unwrap_or(5432)));
        let database = url.path().trim_start_matches('/').to_owned();
        return Ok(Target::Postgres { address, database });
    }
    Err(ConnectError(
        "the database URL must start with sqlite: (e.g. sqlite://annotask.db?mode=rwc) or postgres:// (e.g. postgres://postgres@127.0.0.1:5432/annotask)".to_owned(),
    ))
}

/// Checks what can be checked before connecting, so the error says what is wrong.
pub(super) async fn preflight(database_url: &str) -> Result<(), ConnectError> {
    match target(database_url)? {
        Target::Sqlite { path: None, .. } => Ok(()),
        Target::Sqlite {
            path: Some(path),
            creates,
        } => check_sqlite_path(&path, creates),
        Target::Postgres { address: None, .. } => Ok(()),
        Target::Postgres {
            address: Some(address),
            ..
        } => {
            let reached =
                tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(&address)).await;
            match reached {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(ConnectError(format!(
                    "cannot reach PostgreSQL at {address}: {err}. Is PostgreSQL running at {address}?"
                ))),
                Err(_) => Err(ConnectError(format!(
                    "cannot reach PostgreSQL at {address}: no answer within {} s. Is PostgreSQL running at {address}, and does a firewall let the connection through?",
                    REACH_TIMEOUT.as_secs()
                ))),
            }
        }
    }
}

fn check_sqlite_path(path: &Path, creates: bool) -> Result<(), ConnectError> {
    let shown = path.display();
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if directory.exists() && !directory.is_dir() {
        return Err(ConnectError(format!(
            "cannot open the SQLite database at {shown}: {} is a file, not a directory",
            directory.display()
        )));
    }
    if !directory.is_dir() {
        return Err(ConnectError(format!(
            "cannot open the SQLite database at {shown}: the directory {} does not exist (create it, or choose another path)",
            directory.display()
        )));
    }
    if !path.exists() && !creates {
        return Err(ConnectError(format!(
            "cannot open the SQLite database at {shown}: the file does not exist. Add ?mode=rwc to create it: sqlite://{shown}?mode=rwc"
        )));
    }
    Ok(())
}

/// The connection's own error, with where it was trying to go.
pub(super) fn explain(database_url: &str, err: &DbErr) -> ConnectError {
    match target(database_url) {
        Ok(Target::Sqlite { path, .. }) => {
            let shown = path.map_or_else(|| "(in memory)".to_owned(), |p| p.display().to_string());
            ConnectError(format!(
                "cannot open the SQLite database at {shown}: {err}. Check that the directory exists and is writable, and that the path is a file"
            ))
        }
        Ok(Target::Postgres { address, database }) => ConnectError(format!(
            "cannot connect to PostgreSQL database '{database}' at {}: {err}. Check the user, the password and that the database exists",
            address.as_deref().unwrap_or("its default socket")
        )),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_directory_and_a_missing_mode_are_named() {
        let err = preflight("sqlite:///no/such/dir/x.db?mode=rwc")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
        let missing = std::env::temp_dir().join("annotask-never-created.db");
        let err = preflight(&format!("sqlite://{}", missing.display()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("?mode=rwc"), "{err}");
        assert!(preflight("sqlite::memory:").await.is_ok());
    }

    #[tokio::test]
    async fn a_refused_postgres_is_named_by_host_and_port_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap();
        let started = std::time::Instant::now();
        let err = preflight(&format!("postgres://postgres@127.0.0.1:{port}/x"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(err.to_string().contains("Is PostgreSQL running"), "{err}");
    }

    #[test]
    fn other_schemes_are_refused_with_examples() {
        assert!(target("mysql://x").is_err());
    }
}
