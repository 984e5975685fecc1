//! `annotask backup`: a consistent copy of a SQLite database, taken while servers keep serving
//! it. PostgreSQL has its own tools for that.

use std::path::{Path, PathBuf};

use rand::RngCore;

use super::Service;
use crate::error::{Error, Result};

impl Service {
    /// Copies the SQLite database to the new file `to` and returns its absolute path. Refuses
    /// to overwrite anything, and refuses PostgreSQL (pointing to `pg_dump`).
    ///
    /// The copy is one read transaction (`VACUUM INTO`), so it holds exactly the tasks
    /// committed when it began, while writers go on. It is written under a temporary name in
    /// the same directory, synced, then linked to `to`, which fails if `to` appeared
    /// meanwhile: `to` only ever names a complete, durable copy, and a crash or a full disk
    /// leaves at most the temporary file (removed on an ordinary failure).
    pub async fn backup(&self, to: &Path) -> Result<PathBuf> {
        if self.store.backend_name() == "postgres" {
            return Err(Error::invalid(
                "annotask backup copies SQLite databases. Back up PostgreSQL with its own tools, which are consistent while servers keep serving: pg_dump --format=custom --file=annotask.dump 'postgres://USER@HOST:PORT/DB' (restore with pg_restore).",
            ));
        }
        let target = std::path::absolute(to).map_err(|err| {
            Error::invalid(format!(
                "Cannot use {} as a backup file: {err}",
                to.display()
            ))
        })?;
        if target.symlink_metadata().is_ok() {
            return Err(already_exists(&target));
        }
        let directory = target
            .parent()
            .ok_or_else(|| Error::invalid(format!("{} is not a file name.", target.display())))?;
        if !directory.is_dir() {
            return Err(Error::invalid(format!(
                "Cannot write the backup {}: the directory {} does not exist.",
                target.display(),
                directory.display()
            )));
        }
        let file_name = target
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{} is not a file name SQLite can use (it must be UTF-8).",
                    target.display()
                ))
            })?;
        if !self.store.sqlite_has_schema().await? {
            return Err(Error::invalid(
                "This database has no annotask tables, so there is nothing to back up: check --database-url (the path is relative to the current directory).",
            ));
        }
        let mut random = [0u8; 6];
        rand::rng().fill_bytes(&mut random);
        let partial = directory.join(format!(".{file_name}.{}.partial", hex::encode(random)));
        let partial_text = partial.to_str().ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a path SQLite can use (it must be UTF-8).",
                directory.display()
            ))
        })?;
        tracing::info!(to = %target.display(), "backup started");
        if let Err(err) = self.store.sqlite_vacuum_into(partial_text).await {
            remove_partial(&partial);
            return Err(err);
        }
        let published = {
            let (partial, target) = (partial.clone(), target.clone());
            tokio::task::spawn_blocking(move || publish(&partial, &target))
                .await
                .map_err(|err| {
                    tracing::error!(error = %err, "the backup's publishing task failed");
                    Error::Internal
                })?
        };
        remove_partial(&partial);
        published?;
        tracing::info!(to = %target.display(), "backup written");
        Ok(target)
    }
}

fn already_exists(target: &Path) -> Error {
    Error::invalid(format!(
        "{} already exists: annotask backup never overwrites a file. Choose a new name, or remove it first.",
        target.display()
    ))
}

/// Syncs the copy (`VACUUM INTO` does not promise to), links it under its name (never
/// replacing a file that appeared meanwhile) and syncs the directory, so the copy survives a
/// power loss once the command has returned.
fn publish(partial: &Path, target: &Path) -> Result<()> {
    let io = |what: &str, err: std::io::Error| {
        Error::invalid(format!(
            "Cannot {what} the backup {}: {err}",
            target.display()
        ))
    };
    std::fs::File::open(partial)
        .and_then(|file| file.sync_all())
        .map_err(|err| io("sync", err))?;
    match std::fs::hard_link(partial, target) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(already_exists(target))
        }
        // A file system without hard links: check once more, then rename.
        Err(_) => {
            if target.symlink_metadata().is_ok() {
                return Err(already_exists(target));
            }
            std::fs::rename(partial, target).map_err(|err| io("name", err))?;
        }
    }
    if let Some(directory) = target.parent() {
        // Directories cannot be opened for syncing everywhere (Windows); the file itself is.
        if let Ok(directory) = std::fs::File::open(directory) {
            directory
                .sync_all()
                .map_err(|err| io("sync the directory of", err))?;
        }
    }
    Ok(())
}

fn remove_partial(partial: &Path) {
    if let Err(err) = std::fs::remove_file(partial) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %partial.display(), error = %err, "could not remove a partial backup");
        }
    }
}
