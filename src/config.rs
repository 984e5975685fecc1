//! Runtime configuration shared by the CLI and the tests.

use std::time::Duration;

/// Size limits on input (SPEC §3).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_unique_id_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_metadata_bytes: 64 * 1024,
            max_tags: 100,
            max_tag_chars: 256,
            max_unique_id_chars: 255,
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
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            limits: Limits::default(),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            sweep_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}
