//! `annotask.v1.WorkService`.

use serde_json::Value;
use tonic::{Request, Response, Status};

use super::{convert, non_empty, GrpcApi};
use crate::{
    api::grpc::proto::{self, work_service_server::WorkService},
    domain::ClaimFilter,
    service::ClaimRequest,
};

impl GrpcApi {}

type TaskResult = Result<Response<proto::Task>, Status>;

/// proto3 cannot tell 0 from unset: 0 means the default.
fn given(value: i32) -> Option<i64> {
    (value != 0).then_some(i64::from(value))
}

#[tonic::async_trait]
impl WorkService for GrpcApi {
    async fn claim_tasks(
        &self,
        request: Request<proto::ClaimTasksRequest>,
    ) -> Result<Response<proto::ClaimTasksResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let claim = ClaimRequest {
            filter: ClaimFilter {
                project: non_empty(request.project),
                batch: non_empty(request.batch),
                task_type: non_empty(request.r#type),
            },
            limit: given(request.limit),
            lease_seconds: given(request.lease_seconds),
        };
        let claimed = self.service.claim_tasks(caller, claim).await?;
        Ok(Response::new(proto::ClaimTasksResponse {
            leases: claimed
                .into_iter()
                .map(|claimed| proto::Lease {
                    task: Some(convert::task(claimed.task)),
                    lease_token: claimed.lease_token,
                    lease_expires_at: Some(convert::timestamp(claimed.lease_expires_at)),
                })
                .collect(),
        }))
    }

    async fn heartbeat_lease(
        &self,
        request: Request<proto::HeartbeatLeaseRequest>,
    ) -> Result<Response<proto::HeartbeatLeaseResponse>, Status> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let expires_at = self
            .service
            .heartbeat_lease(
                caller,
                &request.task_id,
                &request.lease_token,
                given(request.lease_seconds),
            )
            .await?;
        Ok(Response::new(proto::HeartbeatLeaseResponse {
            lease_expires_at: Some(convert::timestamp(expires_at)),
        }))
    }

    async fn release_lease(&self, request: Request<proto::ReleaseLeaseRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let task = self
            .service
            .release_lease(caller, &request.task_id, &request.lease_token)
            .await?;
        Ok(Response::new(convert::task(task)))
    }

    async fn complete_task(&self, request: Request<proto::CompleteTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let response = Value::Object(convert::object_or_empty(request.response));
        let task = self
            .service
            .complete_task(caller, &request.task_id, &request.lease_token, response)
            .await?;
        Ok(Response::new(convert::task(task)))
    }

    async fn fail_task(&self, request: Request<proto::FailTaskRequest>) -> TaskResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let task = self
            .service
            .fail_task(
                caller,
                &request.task_id,
                &request.lease_token,
                request.error,
            )
            .await?;
        Ok(Response::new(convert::task(task)))
    }
}
