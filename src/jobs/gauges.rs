//! Refreshes the work-queue, callback-outbox and database-pool gauges on `/metrics`.

use std::{sync::Arc, time::Duration};

use super::{every, Shutdown};
use crate::service::Service;

pub async fn run(service: Arc<Service>, interval: Duration, shutdown: Shutdown) {
    every(interval, shutdown, || async {
        // First: the pool gauges matter most when the database is too busy to answer.
        service.record_pool_gauges();
        if let Err(err) = service.refresh_gauges().await {
            tracing::warn!(error = %err, "refreshing the queue gauges failed");
        }
    })
    .await;
}
