//! Background work beside the API: each job is a loop the server starts with a shutdown
//! signal and awaits on the way out, so no job outlives the pool it uses.

mod callbacks;
mod change_log_pruner;
mod gauges;
mod idempotency_sweeper;

use std::{future::Future, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};

use crate::{config::Config, service::Service};

/// Tells running jobs to stop; a job checks it between units of work.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown has been asked for.
    pub async fn requested(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs `tick` every `every` until shutdown; a tick in progress finishes first.
async fn every<F, Fut>(every: std::time::Duration, mut shutdown: Shutdown, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.requested() => return,
            _ = ticker.tick() => {}
        }
        tick().await;
    }
}

/// The running background jobs of one server.
pub struct Jobs {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Jobs {
    /// Starts every job.
    pub fn start(service: &Arc<Service>, config: &Config) -> Self {
        let mut jobs = Jobs {
            stop: watch::channel(false).0,
            running: Vec::new(),
        };
        jobs.spawn(
            "idempotency sweeper",
            idempotency_sweeper::run(service.clone(), config.sweep_interval, jobs.shutdown()),
        );
        jobs.spawn(
            "queue gauges",
            gauges::run(service.clone(), config.gauge_interval, jobs.shutdown()),
        );
        jobs.spawn(
            "change log pruner",
            change_log_pruner::run(service.clone(), jobs.shutdown()),
        );
        if config.callbacks.deliver {
            jobs.spawn(
                "callback delivery",
                callbacks::run(service.clone(), jobs.shutdown()),
            );
        }
        jobs
    }

    fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    fn spawn(&mut self, name: &'static str, job: impl Future<Output = ()> + Send + 'static) {
        self.running.push((name, tokio::spawn(job)));
    }

    /// Asks every job to stop and waits until each has.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, job) in self.running {
            if let Err(err) = job.await {
                tracing::warn!(job = name, error = %err, "background job ended abnormally");
            }
        }
    }
}
