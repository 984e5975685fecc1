//! The one service layer: every rule of the API lives here, whatever the transport.

mod auth;
mod backup;
mod batches;
mod bulk;
mod callbacks;
mod change_feed;
mod group_commit;
mod idempotency;
mod projects;
mod tasks;
mod work;

pub use auth::{
    credential_from_authorization, generate_api_key, Revocation, KEY_PREFIX_LEN, REVOCATION_DELAY,
};
pub use batches::{BatchPage, NewBatch};
pub use bulk::{
    ImportFingerprint, ImportItem, ImportLine, ImportOutcome, ImportSummary, StoredImport,
    IMPORT_CHUNK,
};
pub use callbacks::{sign_webhook, AttemptOutcome};
pub use change_feed::{TaskEvent, TaskWatch, WatchEnd};
pub use tasks::{tags_from_json, Created, TagEdit, TaskPage};
pub use work::{ClaimRequest, ClaimedTask};

use std::time::Duration;

use tokio::sync::Notify;

use crate::{
    config::{CallbackSettings, Config, Limits},
    error::Result,
    store::Store,
};

/// Concurrent create groups on PostgreSQL.
const POSTGRES_COMMITTERS: usize = 2;

pub struct Service {
    store: Store,
    limits: Limits,
    idempotency_ttl: Duration,
    callbacks: CallbackSettings,
    in_flight: idempotency::InFlightKeys,
    known_keys: auth::KnownKeys,
    auth_failures: auth::FailedAuthLimiter,
    /// Wakes this process's callback worker when a change commits a delivery.
    deliveries_waiting: Notify,
    /// Plain creates, committed together.
    group_commit: group_commit::GroupCommit,
    /// Committed task changes, fanned out to this process's watchers.
    change_feed: change_feed::ChangeFeed,
}

impl Service {
    pub fn new(store: Store, config: &Config) -> Self {
        // SQLite has one writer; PostgreSQL commits a few groups at once.
        let committers = if store.backend_name() == "postgres" {
            POSTGRES_COMMITTERS
        } else {
            1
        };
        let group_commit =
            group_commit::GroupCommit::start(store.clone(), config.callbacks.clone(), committers);
        Service {
            group_commit,
            change_feed: change_feed::ChangeFeed::new(store.clone(), config.watch_buffer),
            store,
            limits: config.limits.clone(),
            idempotency_ttl: config.idempotency_ttl,
            callbacks: config.callbacks.clone(),
            in_flight: idempotency::InFlightKeys::default(),
            known_keys: auth::KnownKeys::default(),
            auth_failures: auth::FailedAuthLimiter::new(config.auth_failures_per_minute),
            deliveries_waiting: Notify::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn callback_settings(&self) -> &CallbackSettings {
        &self.callbacks
    }

    pub async fn health(&self) -> Result<()> {
        self.store.ping().await
    }

    /// Sets the database pool gauges on `/metrics` (cheap: no query).
    pub fn record_pool_gauges(&self) {
        for pool in self.store.pool_stats() {
            let gauge = |state: &'static str| metrics::gauge!("annotask_db_pool_connections", "pool" => pool.pool, "state" => state);
            gauge("idle").set(f64::from(pool.idle));
            gauge("in_use").set(f64::from(pool.in_use));
            metrics::gauge!("annotask_db_pool_max_connections", "pool" => pool.pool)
                .set(f64::from(pool.max));
        }
    }

    /// Closes the database pool (SQLite checkpoints its WAL on close).
    pub async fn close(&self) {
        self.store.clone().close().await;
    }
}
