//! `annotask serve | migrate | api-keys create | callbacks show`: the command line and what each command does.

use std::{io, net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::{
    config::{parse_callback_schedule, Config, Limits, DEFAULT_CALLBACK_SCHEDULE},
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
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH?mode=rwc` or `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        env = "ANNOTASK_DATABASE_URL",
        default_value = "sqlite://annotask.db?mode=rwc"
    )]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ANNOTASK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "ANNOTASK_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// How long an Idempotency-Key and its response are kept (e.g. `24h`, `90m`).
    #[arg(long, env = "ANNOTASK_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: std::time::Duration,
    /// Largest accepted task metadata, in bytes of JSON.
    #[arg(long, env = "ANNOTASK_MAX_METADATA_BYTES", default_value_t = Limits::default().max_metadata_bytes)]
    pub max_metadata_bytes: usize,
    /// Callback retry schedule: comma-separated delays, one attempt each (default: 20 attempts over about 24h).
    #[arg(long, env = "ANNOTASK_CALLBACK_SCHEDULE", default_value = DEFAULT_CALLBACK_SCHEDULE, value_parser = parse_schedule)]
    pub callback_schedule: Schedule,
    /// How long one callback attempt may take (e.g. `15s`).
    #[arg(long, env = "ANNOTASK_CALLBACK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub callback_timeout: Duration,
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
            let listen: SocketAddr = args.listen;
            let app = App::open(args.config()).await?;
            if let Some(key) = app.service.bootstrap_default_account().await? {
                // Printed once, to stdout only: keys are never logged.
                println!("annotask: created account 'default' with API key:");
                println!("{key}");
            }
            telemetry::prometheus();
            let listener = TcpListener::bind(listen).await.map_err(|err| {
                io::Error::new(err.kind(), format!("cannot listen on {listen}: {err}"))
            })?;
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
