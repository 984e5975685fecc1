//! One listener: gRPC (+ health, reflection), grpc-web and REST, over one service.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderName, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;
use tokio::net::TcpListener;
use tonic_web::GrpcWebLayer;
use tower_http::{
    cors::{AllowHeaders, Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{
    api::{grpc::GrpcTasks, rest},
    cli::{ApiKeysCommand, Cli, Command},
    config::Config,
    proto::{task_service_server::TaskServiceServer, FILE_DESCRIPTOR_SET},
    service::Service,
    store::Store,
    telemetry,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A migrated database and the service over it, ready to serve.
pub struct App {
    pub service: Arc<Service>,
    config: Config,
}

impl App {
    /// Connects and runs migrations (forward-only, on every start).
    pub async fn open(config: Config) -> Result<Self, BoxError> {
        let store = Store::connect(&config.database_url).await?;
        store.migrate().await?;
        tracing::info!(backend = store.backend_name(), "database ready");
        let service = Arc::new(Service::new(
            store,
            config.limits.clone(),
            config.idempotency_ttl,
        ));
        Ok(App { service, config })
    }

    pub async fn router(&self) -> Result<Router, BoxError> {
        let max_body = self.config.limits.max_body_bytes;
        let tasks = TaskServiceServer::new(GrpcTasks::new(self.service.clone()))
            .max_decoding_message_size(max_body);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<TaskServiceServer<GrpcTasks>>()
            .await;
        // Each reflection version lists itself; registering the other version's descriptors
        // (and health's) lets any grpcurl build see every service.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1()?;
        let reflection_v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let grpc = tonic::service::Routes::new(tasks)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            .layer(middleware::map_response(
                oversized_message_is_resource_exhausted,
            ))
            .layer(GrpcWebLayer::new())
            // Without this, an unknown REST path would get tonic's gRPC fallback (400).
            .reset_fallback();

        let rest = rest::router(self.service.clone()).layer(DefaultBodyLimit::max(max_body));
        let ops = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(self.service.clone());

        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods(Any)
            // `*` never covers Authorization in browsers: echo what the preflight asks for.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
                HeaderName::from_static("idempotent-replayed"),
                header::RETRY_AFTER,
            ]);

        Ok(grpc
            .merge(ops)
            .nest("/v1", rest)
            .fallback(rest::not_found)
            .layer(middleware::from_fn(telemetry::record_request))
            .layer(TraceLayer::new_for_http())
            .layer(cors))
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let router = self.router().await?;
        let addr = listener.local_addr()?;
        let sweeper = tokio::spawn(sweep_idempotency_keys(
            self.service.clone(),
            self.config.sweep_interval,
        ));
        tracing::info!(%addr, "serving gRPC, grpc-web and REST");
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signalled = stopping.clone();
        let served = axum::serve(listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            signalled.notify_one();
        });
        let grace = self.config.shutdown_grace;
        // In-flight requests get `grace` to finish; a client that never finishes cannot hold
        // the process forever.
        let outcome = tokio::select! {
            served = served => served,
            () = async {
                stopping.notified().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "in-flight requests still running after the grace period");
                Ok(())
            }
        };
        sweeper.abort();
        self.service.close().await;
        outcome?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// tonic answers a message over `max_decoding_message_size` with `OUT_OF_RANGE`; the API
/// promises `RESOURCE_EXHAUSTED` (REST's 413). No handler of ours returns `OUT_OF_RANGE`.
async fn oversized_message_is_resource_exhausted(mut response: Response) -> Response {
    const OUT_OF_RANGE: &str = "11";
    let grpc_status = HeaderName::from_static("grpc-status");
    if response
        .headers()
        .get(&grpc_status)
        .is_some_and(|status| status == OUT_OF_RANGE)
    {
        let resource_exhausted = i32::from(tonic::Code::ResourceExhausted).to_string();
        if let Ok(value) = resource_exhausted.parse() {
            response.headers_mut().insert(grpc_status, value);
        }
    }
    response
}

/// Deletes expired idempotency keys now and then, so the table does not grow without end.
async fn sweep_idempotency_keys(service: Arc<Service>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match service.sweep_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys swept"),
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed"),
        }
    }
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    match service.health().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        )
            .into_response(),
    }
}

async fn metrics() -> Response {
    match telemetry::prometheus() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n").into_response(),
    }
}

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

pub async fn run_cli(cli: Cli) -> Result<(), BoxError> {
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
            database,
        }) => {
            let app = App::open(Config::new(database.database_url)).await?;
            let key = app.service.create_api_key(&account, test).await?;
            println!("{key}");
            Ok(())
        }
    }
}
