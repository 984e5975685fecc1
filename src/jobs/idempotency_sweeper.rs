//! Deletes expired idempotency keys now and then, so the table does not grow without end.

use std::{sync::Arc, time::Duration};

use super::Shutdown;
use crate::service::Service;

pub async fn run(service: Arc<Service>, every: Duration, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.requested() => return,
            _ = ticker.tick() => {}
        }
        match service.sweep_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys swept"),
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed"),
        }
    }
}
