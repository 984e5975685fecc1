//! Refreshes the work-queue and callback-outbox gauges on `/metrics`.

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
        if let Err(err) = service.refresh_gauges().await {
            tracing::warn!(error = %err, "refreshing the queue gauges failed");
        }
    }
}
