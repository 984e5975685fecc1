//! `annotask.v1.ProjectService`.

use tonic::{Request, Response, Status};

use super::{convert, GrpcApi};
use crate::api::grpc::proto::{self, project_service_server::ProjectService};

impl GrpcApi {}

type ProjectResult = Result<Response<proto::Project>, Status>;

#[tonic::async_trait]
impl ProjectService for GrpcApi {
    async fn create_project(&self, request: Request<proto::CreateProjectRequest>) -> ProjectResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let params = convert::object_or_empty(request.params);
        let project = self
            .service
            .create_project(caller, &request.name, &request.r#type, params)
            .await?;
        Ok(Response::new(convert::project(project)))
    }

    async fn get_project(&self, request: Request<proto::GetProjectRequest>) -> ProjectResult {
        let caller = self.caller(&request).await?;
        let project = self
            .service
            .get_project(caller, &request.into_inner().name)
            .await?;
        Ok(Response::new(convert::project(project)))
    }

    async fn list_projects(
        &self,
        request: Request<proto::ListProjectsRequest>,
    ) -> Result<Response<proto::ListProjectsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let projects = self.service.list_projects(caller).await?;
        Ok(Response::new(proto::ListProjectsResponse {
            projects: projects.into_iter().map(convert::project).collect(),
        }))
    }

    async fn set_project_params(
        &self,
        request: Request<proto::SetProjectParamsRequest>,
    ) -> ProjectResult {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let params = convert::object_or_empty(request.params);
        let project = self
            .service
            .set_project_params(caller, &request.name, params, request.patch)
            .await?;
        Ok(Response::new(convert::project(project)))
    }
}
