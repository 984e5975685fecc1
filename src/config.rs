//! Runtime configuration shared by the CLI and the tests.

use std::time::Duration;

/// Limits on input (SPEC §3) and on how long and how many requests may run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_unique_id_chars: usize,
    /// Values of one repeated list filter (`unique_id`, `tags`, `customer_review_status`).
    pub max_filter_values: usize,
    /// An HTTP/1 request line plus headers (larger: 431), and HTTP/2's header list.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's headers; it is also how long an idle
    /// HTTP/1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long a request may take until its answer starts (bulk imports excepted).
    pub request_timeout: Duration,
    /// Requests in flight per process; more are refused at once (429), never queued.
    pub max_concurrent_requests: usize,
    /// How much of a refused HTTP/1 request's body is still read and thrown away, so the client
    /// gets the answer instead of a reset connection.
    pub max_discarded_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_metadata_bytes: 64 * 1024,
            max_tags: 100,
            max_tag_chars: 256,
            max_unique_id_chars: 255,
            max_filter_values: 100,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            max_discarded_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How callbacks are delivered (SPEC §9).
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// One attempt per entry, each the delay before that attempt (the first counts from the
    /// change that caused the callback; the others from the previous attempt).
    pub schedule: Vec<Duration>,
    /// How long one attempt may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// Whether targets on loopback, private, link-local or metadata addresses are allowed.
    pub allow_private: bool,
    /// How many attempts one process runs at once.
    pub concurrency: usize,
    /// Whether this process delivers callbacks at all (tests turn it off to stage a crash).
    pub deliver: bool,
    /// How often the worker looks for due deliveries when nothing woke it.
    pub poll_interval: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            schedule: default_callback_schedule(),
            attempt_timeout: Duration::from_secs(15),
            allow_private: false,
            concurrency: 32,
            deliver: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// 20 attempts over about 24 hours, as Scale retries.
pub const DEFAULT_CALLBACK_SCHEDULE: &str =
    "0s,5s,30s,2m,5m,10m,20m,30m,45m,1h,1h,1h,1h30m,2h,2h,2h,2h,2h,3h,4h";

fn default_callback_schedule() -> Vec<Duration> {
    parse_callback_schedule(DEFAULT_CALLBACK_SCHEDULE).unwrap_or_default()
}

/// `0s,1s,2s,5s`: comma-separated durations, one attempt each.
pub fn parse_callback_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let schedule = text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            humantime::parse_duration(entry)
                .map_err(|err| format!("'{entry}' is not a duration: {err}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if schedule.is_empty() {
        return Err("the callback schedule needs at least one attempt".to_owned());
    }
    Ok(schedule)
}

/// The database pool: how many connections, and how long a request may wait on the database
/// before it is answered 503 / `UNAVAILABLE` instead of hanging.
#[derive(Debug, Clone)]
pub struct DatabasePool {
    /// The PostgreSQL pool's size, per process (SQLite has one writer and a few readers).
    pub max_connections: u32,
    /// How long a request waits for a pooled connection, including opening a new one (TCP,
    /// TLS, login) and the liveness check of an idle one.
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout` for every connection; zero: no limit.
    pub statement_timeout: Duration,
}

impl Default for DatabasePool {
    fn default() -> Self {
        DatabasePool {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub limits: Limits,
    /// How long an Idempotency-Key and its stored response are kept.
    pub idempotency_ttl: Duration,
    /// How often expired idempotency keys are swept.
    pub sweep_interval: Duration,
    /// How long in-flight requests may still run after a shutdown signal.
    pub shutdown_grace: Duration,
    pub callbacks: CallbackSettings,
    /// The database connection pool and its timeouts.
    pub database: DatabasePool,
    /// How often the queue and delivery gauges are refreshed.
    pub gauge_interval: Duration,
    /// Failed authentications a client address may make in a burst, and per minute after;
    /// past that its requests get 429 / `RESOURCE_EXHAUSTED`. 0: no limit.
    pub auth_failures_per_minute: u32,
    /// Origins whose pages may call the API from a browser (grpc-web, REST); empty: any.
    pub cors_origins: Vec<String>,
    /// Task events a watcher (`WatchTasks`) may fall behind by before it is ended with
    /// `RESOURCE_EXHAUSTED`; the events are shared by all watchers, so this bounds memory.
    pub watch_buffer: usize,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            limits: Limits::default(),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            sweep_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            callbacks: CallbackSettings::default(),
            database: DatabasePool::default(),
            gauge_interval: Duration::from_secs(15),
            auth_failures_per_minute: 20,
            cors_origins: Vec::new(),
            watch_buffer: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_twenty_attempts_over_about_a_day() {
        let schedule = default_callback_schedule();
        assert_eq!(schedule.len(), 20);
        let total: Duration = schedule.iter().sum();
        assert!(total > Duration::from_secs(22 * 3600) && total < Duration::from_secs(26 * 3600));
    }

    #[test]
    fn schedules_parse_or_say_which_entry_is_wrong() {
        assert_eq!(
            parse_callback_schedule("0s, 1s,250ms").unwrap(),
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_millis(250)
            ]
        );
        assert!(parse_callback_schedule("1s,soon")
            .unwrap_err()
            .contains("soon"));
        assert!(parse_callback_schedule("").is_err());
    }
}
