//! `annotask serve | migrate | api-keys create | callbacks show | import | export`: the command
//! line and what each command does.

use std::{io, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{
    bulk_client,
    config::{parse_callback_schedule, Config, DEFAULT_CALLBACK_SCHEDULE},
    domain::Role,
    server::{App, BoxError},
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
    /// Allow callbacks to loopback, private, link-local and cloud-metadata addresses.
    #[arg(long, env = "ANNOTASK_ALLOW_PRIVATE_CALLBACKS")]
    pub allow_private_callbacks: bool,
}

impl ServeArgs {
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.database.database_url.clone());
        config.limits.max_body_bytes = self.max_body_bytes;
        config.limits.max_metadata_bytes = self.max_metadata_bytes;
        config.idempotency_ttl = self.idempotency_ttl;
        config
            .callbacks
            .schedule
            .clone_from(&self.callback_schedule.0);
        config.callbacks.attempt_timeout = self.callback_timeout;
        config.callbacks.allow_private = self.allow_private_callbacks;
        config.database_max_connections = self.database_max_connections.max(1);
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
    }
}
