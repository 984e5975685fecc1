//! One listener: gRPC (+ health, reflection), grpc-web and REST over one service, with the
//! background jobs started beside it and stopped with it.

use std::{future::Future, sync::Arc};

use axum::{
    extract::DefaultBodyLimit,
    http::{header, HeaderName},
    middleware,
    serve::ListenerExt,
    Router,
};
use tokio::net::TcpListener;
use tonic_web::GrpcWebLayer;
use tower_http::{
    cors::{AllowHeaders, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    api::{grpc, rest},
    config::Config,
    jobs::Jobs,
    proto::{
        batch_service_server::BatchServiceServer, project_service_server::ProjectServiceServer,
        task_service_server::TaskServiceServer, work_service_server::WorkServiceServer,
        FILE_DESCRIPTOR_SET,
    },
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
                telemetry::REQUEST_ID,
            ]);

        Ok(grpc
            .merge(rest::ops_router(self.service.clone()))
            .nest("/v1", v1)
            .fallback(rest::not_found)
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
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signalled = stopping.clone();
        // Without TCP_NODELAY, small HTTP/2 frames (every gRPC answer) wait out the peer's
        // delayed ACK: about 40 ms per call.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
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
        jobs.stop().await;
        self.service.close().await;
        outcome?;
        tracing::info!("stopped");
        Ok(())
    }
}
