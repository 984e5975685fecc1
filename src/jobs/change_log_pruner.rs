//! Deletes PostgreSQL change-log rows every replica's feed has long read, so the log holds
//! minutes of changes, not all of them (SQLite has no log).

use std::{sync::Arc, time::Duration};

use super::{every, Shutdown};
use crate::service::Service;

/// A quarter of the retention: the log holds at most about 1.25 retentions of rows.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

pub async fn run(service: Arc<Service>, shutdown: Shutdown) {
    every(PRUNE_EVERY, shutdown, || async {
        match service.prune_change_log().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "old task change-log rows pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning the task change log failed"),
        }
    })
    .await;
}
