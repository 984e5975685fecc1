//! `annotask serve | migrate | api-keys create/list/revoke | callbacks show | backup | import |
//! export`: the command line and what each command does.

use std::{io, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{
    bulk_client,
    config::{parse_callback_schedule, Config, DatabasePool, DEFAULT_CALLBACK_SCHEDULE},
    domain::{ApiKeyInfo, Role},
    server::{App, BoxError, MIN_HEADER_BYTES},
    service::{Revocation, Service},
    store::Store,
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "annotask",
    version,
    about = "Scale-compatible annotation task service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve gRPC, grpc-web and REST on one port.
    Serve(ServeArgs),
    /// Apply migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
    /// Show an account's callback secrets.
    #[command(subcommand)]
    Callbacks(CallbacksCommand),
    /// Copy a SQLite database to a new file while servers keep serving it (PostgreSQL: use pg_dump).
    Backup(BackupArgs),
    /// Import an NDJSON file of tasks into a running server, with progress and a summary.
    Import(bulk_client::ImportArgs),
    /// Export tasks from a running server as NDJSON (stdout or --output).
    Export(bulk_client::ExportArgs),
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Where the data lives: `sqlite://PATH?mode=rwc` (created if missing) or `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        env = "ANNOTASK_DATABASE_URL",
        default_value = "sqlite://annotask.db?mode=rwc"
    )]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, `HOST:PORT` (a host name such as `localhost:8080`, or `0.0.0.0:8080` for every interface).
    #[arg(long, env = "ANNOTASK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Largest accepted request body (larger: 413), in bytes or with a unit: `10MiB`, `512KiB`.
    #[arg(long, env = "ANNOTASK_MAX_BODY_BYTES", default_value = "10MiB", value_parser = parse_size)]
    pub max_body_bytes: usize,
    /// How long an Idempotency-Key and its response are kept (e.g. `24h`, `90m`).
    #[arg(long, env = "ANNOTASK_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: std::time::Duration,
    /// Largest accepted task or batch metadata, as JSON: in bytes or with a unit, e.g. `64KiB`.
    #[arg(long, env = "ANNOTASK_MAX_METADATA_BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub max_metadata_bytes: usize,
    /// Callback retry schedule: comma-separated delays, one attempt each (default: 20 attempts over about 24h).
    #[arg(long, env = "ANNOTASK_CALLBACK_SCHEDULE", default_value = DEFAULT_CALLBACK_SCHEDULE, value_parser = parse_schedule)]
    pub callback_schedule: Schedule,
    /// How long one callback attempt may take (e.g. `15s`).
    #[arg(long, env = "ANNOTASK_CALLBACK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub callback_timeout: Duration,
    /// PostgreSQL connections this process may open (replicas × this must stay under the server's max_connections).
    #[arg(long, env = "ANNOTASK_DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    pub database_max_connections: u32,
    /// How long a request waits for a database connection (opening one included) before it is answered 503 / UNAVAILABLE.
    #[arg(long, env = "ANNOTASK_DATABASE_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_acquire_timeout: Duration,
    /// PostgreSQL statement_timeout for every connection (`0s`: none); a statement cut by it is answered 503.
    #[arg(long, env = "ANNOTASK_DATABASE_STATEMENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub database_statement_timeout: Duration,
    /// Largest HTTP/1 request line plus headers (larger: 431) and HTTP/2 header list; at least 8KiB.
    #[arg(long, env = "ANNOTASK_MAX_HEADER_BYTES", default_value = "16KiB", value_parser = parse_size)]
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's headers before the connection is closed; also how long an idle HTTP/1 connection is kept.
    #[arg(long, env = "ANNOTASK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,
    /// How long a request may take until its answer starts (bulk imports excepted): 408 if its body was still arriving, else 503; gRPC `DEADLINE_EXCEEDED`.
    #[arg(long, env = "ANNOTASK_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
    /// Requests in flight per process; beyond it a request is refused at once (429 / `RESOURCE_EXHAUSTED`), not queued.
    #[arg(long, env = "ANNOTASK_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Values one repeated list filter (`unique_id`, `tags`, `customer_review_status`) may have; more: 400.
    #[arg(long, env = "ANNOTASK_MAX_FILTER_VALUES", default_value_t = 100)]
    pub max_filter_values: usize,
    /// How much of a refused HTTP/1 request's unread body is still read and discarded so the client sees the answer, not a reset.
    #[arg(long, env = "ANNOTASK_MAX_DISCARDED_BODY_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub max_discarded_body_bytes: usize,
    /// Allow callbacks to loopback, private, link-local and cloud-metadata addresses.
    #[arg(long, env = "ANNOTASK_ALLOW_PRIVATE_CALLBACKS")]
    pub allow_private_callbacks: bool,
    /// Failed authentications one client address (IPv6: its /64) may make in a burst and per minute; past that, 429 for all its requests until it refills. 0 turns the limit off (e.g. behind a proxy, where every client shares its address).
    #[arg(long, env = "ANNOTASK_AUTH_FAILURES_PER_MINUTE", default_value_t = 20)]
    pub auth_failures_per_minute: u32,
    /// An origin (`https://console.example.com`) whose pages may call the API from a browser; repeat it, or comma-separate in the environment. None given: any origin (keys, not cookies, authenticate, so a page can only use a key it was given).
    #[arg(long = "cors-origin", env = "ANNOTASK_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,
}

impl ServeArgs {
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.database.database_url.clone());
        config.limits.max_body_bytes = self.max_body_bytes;
        config.limits.max_metadata_bytes = self.max_metadata_bytes;
        config.limits.max_header_bytes = self.max_header_bytes.max(MIN_HEADER_BYTES);
        config.limits.header_read_timeout = self.header_read_timeout;
        config.limits.request_timeout = self.request_timeout;
        config.limits.max_concurrent_requests = self.max_concurrent_requests as usize;
        config.limits.max_filter_values = self.max_filter_values;
        config.limits.max_discarded_body_bytes = self.max_discarded_body_bytes as u64;
        config.idempotency_ttl = self.idempotency_ttl;
        config
            .callbacks
            .schedule
            .clone_from(&self.callback_schedule.0);
        config.callbacks.attempt_timeout = self.callback_timeout;
        config.callbacks.allow_private = self.allow_private_callbacks;
        config.database.max_connections = self.database_max_connections.max(1);
        config.database.acquire_timeout = self.database_acquire_timeout;
        config.database.statement_timeout = self.database_statement_timeout;
        config.auth_failures_per_minute = self.auth_failures_per_minute;
        config.cors_origins.clone_from(&self.cors_origins);
        config
    }
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create the account if needed and a new API key for it; the key is the last line printed.
    Create {
        /// The account's name; it is created if it does not exist.
        #[arg(long)]
        account: String,
        /// A test key (`test_…`): its tasks live in a separate test world.
        #[arg(long)]
        test: bool,
        /// `admin` may do everything; `worker` may only read tasks and work the queue.
        #[arg(long, default_value = "admin", value_parser = parse_role)]
        scope: Role,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List an account's keys, one a line: prefix, live or test, scope, creation time, revocation.
    List {
        /// The account's name.
        #[arg(long)]
        account: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke the account's one active key whose prefix starts with PREFIX (as `list` shows it).
    Revoke {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// The key's prefix as `list` shows it (e.g. `live_1a2b3c4`), or enough of it to match one key.
        #[arg(long)]
        prefix: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new file to write the copy to; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum CallbacksCommand {
    /// Print `callback_auth_key=…` and `signing_secret=whsec_…` for an account.
    Show {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// Replace both secrets first (receivers must then use the new ones).
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `10MiB`, `64 KiB` or a plain number of bytes.
fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|err| {
        format!("'{text}' is not a size: use bytes or a unit, e.g. 10MiB or 65536 ({err})")
    })?;
    usize::try_from(size.as_u64()).map_err(|_| format!("'{text}' is too large"))
}

/// A duration above zero: a zero timeout would refuse every request.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("the duration must be above zero".to_owned()),
        Err(err) => Err(format!("'{text}' is not a duration, e.g. 10s or 2m: {err}")),
    }
}

/// The callback schedule as one value (clap would read a `Vec` as repeated flags).
#[derive(Debug, Clone)]
pub struct Schedule(Vec<Duration>);

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    parse_callback_schedule(text).map(Schedule)
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("'{text}' is not a scope: use admin or worker"))
}

/// Runs one command to its end.
pub async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve(args) => {
            // Before migrations: a port in use is reported before anything else is touched.
            let listen = &args.listen;
            let listener = TcpListener::bind(listen.as_str()).await.map_err(|err| {
                let hint = if err.kind() == io::ErrorKind::AddrInUse {
                    " (another process is using it: stop it, or choose another --listen)"
                } else {
                    ""
                };
                io::Error::new(
                    err.kind(),
                    format!("cannot listen on {listen}: {err}{hint}"),
                )
            })?;
            let app = App::open(args.config()).await?;
            if let Some(key) = app.service.bootstrap_default_account().await? {
                // Printed once, to stdout only: keys are never logged.
                println!("annotask: created account 'default' with API key:");
                println!("{key}");
            }
            telemetry::prometheus();
            app.serve(listener, shutdown_signal()).await
        }
        Command::Migrate(args) => {
            App::open(Config::new(args.database_url)).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKeys(ApiKeysCommand::Create {
            account,
            test,
            scope,
            database,
        }) => {
            let app = App::open(Config::new(database.database_url)).await?;
            let key = app.service.create_api_key(&account, test, scope).await?;
            println!("{key}");
            Ok(())
        }
        Command::ApiKeys(ApiKeysCommand::List { account, database }) => {
            let app = App::open(Config::new(database.database_url)).await?;
            // Prefixes only: the keys themselves are not stored.
            for key in app.service.list_api_keys(&account).await? {
                println!("{}", key_line(&key));
            }
            Ok(())
        }
        Command::ApiKeys(ApiKeysCommand::Revoke {
            account,
            prefix,
            database,
        }) => {
            let app = App::open(Config::new(database.database_url)).await?;
            match app.service.revoke_api_key(&account, &prefix).await? {
                Revocation::Revoked(key) => {
                    println!("revoked: {}", key_line(&key));
                    println!(
                        "running servers refuse it within {} s",
                        crate::service::REVOCATION_DELAY.as_secs()
                    );
                }
                Revocation::AlreadyRevoked(keys) => {
                    for key in keys {
                        println!("already revoked: {}", key_line(&key));
                    }
                }
            }
            Ok(())
        }
        Command::Backup(args) => {
            // No migrations: a backup taken before an upgrade must leave the schema as it is.
            let url = args.database.database_url;
            let pool = DatabasePool {
                max_connections: 1,
                ..DatabasePool::default()
            };
            let store = Store::connect(&url, &pool).await?;
            let service = Service::new(store, &Config::new(url));
            let written = service.backup(&args.to).await;
            service.close().await;
            println!("backup written to {}", written?.display());
            Ok(())
        }
        Command::Callbacks(CallbacksCommand::Show {
            account,
            rotate,
            database,
        }) => {
            let app = App::open(Config::new(database.database_url)).await?;
            let secrets = app.service.show_callback_secrets(&account, rotate).await?;
            // Printed to stdout on request only: secrets are never logged.
            println!("callback_auth_key={}", secrets.auth_key);
            println!("signing_secret={}", secrets.signing_secret);
            Ok(())
        }
        Command::Import(args) => bulk_client::import(args).await,
        Command::Export(args) => bulk_client::export(args).await,
    }
}

/// One line of `api-keys list`: `live_1a2b3c4  live  admin   2026-11-30T12:00:00.000Z`, then
/// `  revoked <time>` when it is.
fn key_line(key: &ApiKeyInfo) -> String {
    let prefix = key.prefix.as_deref().unwrap_or("(unknown prefix)");
    let world = if key.is_test { "test" } else { "live" };
    let mut line = format!(
        "{prefix:<16}  {world}  {:<6}  {}",
        key.role.as_str(),
        key.created_at.to_iso()
    );
    if let Some(at) = key.revoked_at {
        line.push_str(&format!("  revoked {}", at.to_iso()));
    }
    line
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// `scheme://host[:port]`, as a browser sends it in `Origin` (no path, no trailing slash).
fn parse_origin(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|err| format!("'{text}' is not an origin: {err}"))?;
    let origin = url.origin();
    if !origin.is_tuple() || !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{text}' is not an http(s) origin"));
    }
    let serialized = origin.ascii_serialization();
    if text.trim_end_matches('/') != serialized {
        return Err(format!(
            "'{text}' is not an origin: write it as '{serialized}'"
        ));
    }
    Ok(serialized)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_of_every_command_says_what_it_is_for() {
        fn check(command: &clap::Command, path: &str) {
            let path = format!("{path} {}", command.get_name());
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no description");
            }
            for sub in command.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no description",
                    sub.get_name()
                );
                check(sub, &path);
            }
        }
        Cli::command().debug_assert();
        check(&Cli::command(), "");
    }

    #[test]
    fn key_lines_show_the_prefix_world_scope_and_times() {
        let mut key = ApiKeyInfo {
            id: 1,
            prefix: Some("live_1a2b3c4".to_owned()),
            is_test: false,
            role: Role::Worker,
            created_at: crate::domain::Timestamp::from_millis(0),
            revoked_at: None,
        };
        assert_eq!(
            key_line(&key),
            "live_1a2b3c4      live  worker  1970-01-01T00:00:00.000Z"
        );
        key.prefix = None;
        key.is_test = true;
        key.revoked_at = Some(crate::domain::Timestamp::from_millis(1000));
        assert_eq!(
            key_line(&key),
            "(unknown prefix)  test  worker  1970-01-01T00:00:00.000Z  revoked 1970-01-01T00:00:01.000Z"
        );
    }

    #[test]
    fn sizes_take_units_or_bytes() {
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("64 KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("lots").unwrap_err().contains("10MiB"));
    }

    #[test]
    fn the_documented_defaults_are_the_limits_defaults() {
        let cli = Cli::try_parse_from(["annotask", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.config();
        let defaults = crate::config::Limits::default();
        assert_eq!(config.limits.max_body_bytes, defaults.max_body_bytes);
        assert_eq!(
            config.limits.max_metadata_bytes,
            defaults.max_metadata_bytes
        );
        assert_eq!(config.limits.max_header_bytes, defaults.max_header_bytes);
        assert_eq!(
            config.limits.header_read_timeout,
            defaults.header_read_timeout
        );
        assert_eq!(config.limits.request_timeout, defaults.request_timeout);
        assert_eq!(
            config.limits.max_concurrent_requests,
            defaults.max_concurrent_requests
        );
        assert_eq!(config.limits.max_filter_values, defaults.max_filter_values);
        assert_eq!(
            config.limits.max_discarded_body_bytes,
            defaults.max_discarded_body_bytes
        );
    }

    #[test]
    fn cors_origins_are_scheme_host_and_port_only() {
        assert_eq!(
            super::parse_origin("https://console.example.com/").as_deref(),
            Ok("https://console.example.com")
        );
        assert_eq!(
            super::parse_origin("http://127.0.0.1:5173").as_deref(),
            Ok("http://127.0.0.1:5173")
        );
        assert!(super::parse_origin("https://example.com/path").is_err());
        assert!(super::parse_origin("ftp://example.com").is_err());
        assert!(super::parse_origin("example.com").is_err());
    }
}
