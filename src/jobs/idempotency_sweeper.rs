//! Deletes expired idempotency keys now and then, so the table does not grow without end.

use std::{sync::Arc, time::Duration};

use super::{every, Shutdown};
use crate::service::Service;

pub async fn run(service: Arc<Service>, interval: Duration, shutdown: Shutdown) {
    every(interval, shutdown, || async {
        match service.sweep_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys swept"),
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed"),
        }
    })
    .await;
}
