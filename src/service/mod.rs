//! The one service layer: every rule of the API lives here, whatever the transport.

mod auth;
mod idempotency;
mod tasks;

pub use auth::{credential_from_authorization, generate_api_key};
pub use tasks::{tags_from_json, Created, TagEdit, TaskPage};

use std::time::Duration;

use crate::{config::Limits, error::Result, store::Store};

pub struct Service {
    store: Store,
    limits: Limits,
    idempotency_ttl: Duration,
    in_flight: idempotency::InFlightKeys,
}

impl Service {
    pub fn new(store: Store, limits: Limits, idempotency_ttl: Duration) -> Self {
        Service {
            store,
            limits,
            idempotency_ttl,
            in_flight: idempotency::InFlightKeys::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub async fn health(&self) -> Result<()> {
        self.store.ping().await
    }

    /// Closes the database pool (SQLite checkpoints its WAL on close).
    pub async fn close(&self) {
        self.store.clone().close().await;
    }
}
