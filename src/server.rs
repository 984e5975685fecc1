//! One listener: gRPC (+ health, reflection), grpc-web and REST over one service, with the
//! background jobs started beside it and stopped with it.

mod limits;
mod socket;

use std::{future::Future, io, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{
    extract::DefaultBodyLimit,
    http::{header, HeaderName, HeaderValue},
    middleware, Router,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tonic_web::GrpcWebLayer;
use tower::Service as _;
use tower_http::{
    cors::{AllowHeaders, AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use self::socket::ServerSocket;
use crate::{
    api::{
        console,
        grpc::{
            self,
            proto::{
                batch_service_server::BatchServiceServer,
                project_service_server::ProjectServiceServer,
                task_service_server::TaskServiceServer, work_service_server::WorkServiceServer,
            },
        },
        rest,
    },
    config::Config,
    jobs::Jobs,
    proto::FILE_DESCRIPTOR_SET,
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
        let store = Store::connect(&config.database_url, &config.database).await?;
        store.migrate().await?;
        tracing::info!(backend = store.backend_name(), "database ready");
        let service = Arc::new(Service::new(store, &config));
        Ok(App { service, config })
    }

    pub async fn router(&self) -> Result<Router, BoxError> {
        // Installed before the first request, not at the first scrape, so none goes uncounted.
        telemetry::prometheus();
        let max_body = self.config.limits.max_body_bytes;
        let api = grpc::GrpcApi::new(self.service.clone());
        let tasks = TaskServiceServer::new(api.clone()).max_decoding_message_size(max_body);
        let work = WorkServiceServer::new(api.clone()).max_decoding_message_size(max_body);
        let projects = ProjectServiceServer::new(api.clone()).max_decoding_message_size(max_body);
        let batches = BatchServiceServer::new(api).max_decoding_message_size(max_body);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<TaskServiceServer<grpc::GrpcApi>>()
            .await;
        health_reporter
            .set_serving::<WorkServiceServer<grpc::GrpcApi>>()
            .await;
        health_reporter
            .set_serving::<ProjectServiceServer<grpc::GrpcApi>>()
            .await;
        health_reporter
            .set_serving::<BatchServiceServer<grpc::GrpcApi>>()
            .await;
        // Each reflection version lists itself; registering the other version's descriptors
        // (and health's) lets any grpcurl build see every service. google.rpc's error details
        // let clients decode the `ErrorInfo` on every error instead of showing raw bytes.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
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
            .add_service(work)
            .add_service(projects)
            .add_service(batches)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            .layer(middleware::map_response(
                grpc::oversized_message_is_resource_exhausted,
            ))
            .layer(middleware::map_response(
                grpc::undecodable_message_is_invalid_argument,
            ))
            .layer(GrpcWebLayer::new())
            // Without this, an unknown REST path would get tonic's gRPC fallback (400).
            .reset_fallback();

        let v1 = rest::v1_router(self.service.clone()).layer(DefaultBodyLimit::max(max_body));

        let origins = if self.config.cors_origins.is_empty() {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.config
                    .cors_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            )
        };
        let cors = CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(Any)
            // Chromium caps this at 2 hours: a console does not repeat its preflights for that long.
            .max_age(Duration::from_secs(2 * 60 * 60))
            // `*` never covers Authorization in browsers: echo what the preflight asks for.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
                HeaderName::from_static("idempotent-replayed"),
                header::RETRY_AFTER,
                telemetry::REQUEST_ID,
            ]);

        Ok(grpc
            .merge(rest::ops_router(self.service.clone()))
            .nest("/v1", v1)
            .fallback_service(console::fallback())
            .layer(middleware::from_fn_with_state(
                limits::RequestLimits::new(&self.config.limits),
                limits::enforce,
            ))
            .layer(middleware::from_fn(telemetry::record_request))
            // Outermost last: the id is checked, then made if missing, before the trace span
            // that carries it opens; the answer (REST, gRPC metadata, grpc-web) echoes it.
            .layer(PropagateRequestIdLayer::new(telemetry::REQUEST_ID))
            .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span))
            .layer(SetRequestIdLayer::new(
                telemetry::REQUEST_ID,
                MakeRequestUuid,
            ))
            .layer(middleware::map_request(telemetry::drop_unusable_request_id))
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
        let jobs = Jobs::start(&self.service, &self.config);
        tracing::info!(%addr, "serving gRPC, grpc-web and REST");
        let connections = GracefulShutdown::new();
        accept_until(
            listener,
            router,
            connection_builder(&self.config),
            &connections,
            shutdown,
        )
        .await;
        // Watches never finish on their own: end them, or they would hold the grace period.
        self.service.stop_watchers();
        let grace = self.config.shutdown_grace;
        // In-flight requests get `grace` to finish; a client that never finishes cannot hold
        // the process forever.
        if tokio::time::timeout(grace, connections.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight requests still running after the grace period"
            );
        }
        jobs.stop().await;
        self.service.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// hyper's smallest HTTP/1 read buffer; a smaller one panics.
pub const MIN_HEADER_BYTES: usize = 8192;

/// HTTP/1.1 and h2c (gRPC) on one port, with the header limits applied per connection.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper-util's auto builder has no `max_header_size`: a request head must fit the read
        // buffer (which also caps body reads at this size). hyper refuses less than 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts connections until `shutdown` resolves; each is served on its own task and watched
/// by `connections` so shutdown can wait for it.
async fn accept_until(
    listener: TcpListener,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    connections: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    // Every request carries `ConnectInfo<SocketAddr>`, the peer address, as axum's own
    // `serve` would give it.
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    pause_after_accept_error(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, small HTTP/2 frames (every gRPC answer) wait out the peer's
        // delayed ACK: about 40 ms per call.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let Ok(service) = make_service.call(peer).await;
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(ServerSocket::new(tcp)),
                TowerToHyperService::new(service),
            )
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
    }
}

/// A peer that hung up while queued is nothing to wait for; anything else (out of file
/// descriptors) gets a pause so the loop does not spin.
async fn pause_after_accept_error(err: io::Error) {
    let peer_gone = matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    );
    if !peer_gone {
        tracing::error!(error = %err, "cannot accept a connection; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
