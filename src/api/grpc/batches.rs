//! `annotask.v1.BatchService`.

use serde_json::Value;
use tonic::{Request, Response, Status};

use super::{convert, non_empty, tasks::time_range, GrpcApi};
use crate::{
    api::grpc::proto::{self, batch_service_server::BatchService},
    domain::BatchFilter,
    service::NewBatch,
};

impl GrpcApi {}

type BatchResult = Result<Response<proto::Batch>, Status>;

#[tonic::async_trait]
impl BatchService for GrpcApi {
    async fn create_batch(&self, request: Request<proto::CreateBatchRequest>) -> BatchResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let new = NewBatch {
            name: request.name,
            project: request.project,
            callback: non_empty(request.callback),
            metadata: request
                .metadata
                .map(|metadata| Value::Object(convert::struct_to_json(metadata))),
            staging: request.staging,
        };
        let batch = self.service.create_batch(caller, new).await?;
        Ok(Response::new(convert::batch(batch)))
    }

    async fn get_batch(&self, request: Request<proto::GetBatchRequest>) -> BatchResult {
        let caller = self.caller(&request).await?;
        let batch = self
            .service
            .get_batch(caller, &request.into_inner().name)
            .await?;
        Ok(Response::new(convert::batch(batch)))
    }

    async fn list_batches(
        &self,
        request: Request<proto::ListBatchesRequest>,
    ) -> Result<Response<proto::ListBatchesResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let filter = BatchFilter {
            project: non_empty(request.project),
            status: convert::from_batch_status(request.status)?,
            created: time_range(
                "start_time",
                request.start_time,
                "end_time",
                request.end_time,
            )?,
        };
        let limit = (request.limit != 0).then_some(i64::from(request.limit));
        let page = self
            .service
            .list_batches(caller, filter, limit, Some(i64::from(request.offset)))
            .await?;
        Ok(Response::new(convert::batch_page(page)))
    }

    async fn finalize_batch(&self, request: Request<proto::FinalizeBatchRequest>) -> BatchResult {
        let caller = self.caller(&request).await?;
        let batch = self
            .service
            .finalize_batch(caller, &request.into_inner().name)
            .await?;
        Ok(Response::new(convert::batch(batch)))
    }

    async fn get_batch_status(
        &self,
        request: Request<proto::GetBatchStatusRequest>,
    ) -> Result<Response<proto::GetBatchStatusResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (batch, counts) = self
            .service
            .batch_status(caller, &request.into_inner().name)
            .await?;
        Ok(Response::new(convert::batch_counts(&batch, counts)))
    }

    async fn set_batch_metadata(
        &self,
        request: Request<proto::SetBatchMetadataRequest>,
    ) -> BatchResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let metadata = Value::Object(convert::object_or_empty(request.metadata));
        let batch = self
            .service
            .set_batch_metadata(caller, &request.name, metadata)
            .await?;
        Ok(Response::new(convert::batch(batch)))
    }
}
