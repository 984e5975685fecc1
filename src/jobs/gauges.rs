//! Refreshes the work-queue and callback-outbox gauges on `/metrics`.

use std::{sync::Arc, time::Duration};

use super::{every, Shutdown};
use crate::service::Service;

pub async fn run(service: Arc<Service>, interval: Duration, shutdown: Shutdown) {
    every(interval, shutdown, || async {
        if let Err(err) = service.refresh_gauges().await {
            tracing::warn!(error = %err, "refreshing the queue gauges failed");
        }
    })
    .await;
}
